"""What changes between two configs: the reload summary and ``fastgw diff`` (L1).

``diff(old, new, old_files, new_files)`` compares two loaded configs (secrets compared by
a digest, never shown) and the fingerprints of the files they reference (``files.py``),
and returns a ``Summary``: a few named groups, each ``added`` / ``removed`` / ``changed``
lists of names, in the order an operator reads them:

==============  ==================================================================
``services``    by service key; "changed" names the fields (routes aside)
``routes``      by ``service/route-name``
``limits``      rate-limit tiers (``rate_limit.<tier>``) and the section's options
``auth keys``   ``auth.keys`` by kid (else index), ``auth.jwks`` by name (else URL),
                ``auth.jwt_secret``
``settings``    every other changed leaf, by path (``gateway.timeout``)
``files``       referenced files whose content changed (a renewed certificate)
==============  ==================================================================

An empty summary means "no changes": a reload of it is a no-op.  Rule: a secret's value
never reaches a summary line, only the fact that it changed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from fastgw.config.base import Secret
from fastgw.config.redact import to_printable

GROUPS = ("services", "routes", "limits", "auth keys", "settings", "files")


class Group(msgspec.Struct):
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class Summary(msgspec.Struct):
    groups: dict[str, Group]

    def __bool__(self) -> bool:
        return any(self.groups.values())

    def lines(self) -> list[str]:
        """``services: +a -b ~c(timeout)`` style lines, one per non-empty group."""
        out = []
        for name in GROUPS:
            g = self.groups.get(name)
            if g:
                parts = [f"+{x}" for x in g.added] + [f"-{x}" for x in g.removed] + [f"~{x}" for x in g.changed]
                out.append(f"{name}: " + " ".join(parts))
        return out

    def short(self) -> str:
        """One line: ``services +1 -0 ~2; routes +3 ...`` or ``no changes``."""
        parts = []
        for name in GROUPS:
            g = self.groups.get(name)
            if g:
                parts.append(f"{name} +{len(g.added)} -{len(g.removed)} ~{len(g.changed)}")
        return "; ".join(parts) or "no changes"

    def to_doc(self) -> dict:
        return {k: msgspec.to_builtins(g) for k, g in self.groups.items() if g}


def _digest(s: Secret) -> str:
    return "secret:" + hashlib.sha256(s.encode()).hexdigest()[:16]


def comparable(cfg) -> dict[str, Any]:
    """The config as builtins with each secret replaced by a digest of it."""
    return to_printable(cfg, secret=_digest)


def _compare(a: dict, b: dict, g: Group, fmt=lambda k: k) -> None:
    for k in a:
        if k not in b:
            g.removed.append(fmt(k))
        elif a[k] != b[k]:
            g.changed.append(fmt(k))
    g.added += [fmt(k) for k in b if k not in a]


def _leaves(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            _leaves(a.get(k), b.get(k), f"{path}.{k}" if path else str(k), out)
    elif a != b:
        out.append(path)


def _by(items: list, key) -> dict:
    out = {}
    for i, x in enumerate(items or ()):
        out[key(x) or f"[{i}]"] = x
    return out


def diff(old, new, old_files: dict | None = None, new_files: dict | None = None) -> Summary:
    """What a reload from ``old`` to ``new`` changes (see the module doc)."""
    a, b = comparable(old), comparable(new)
    groups = {name: Group() for name in GROUPS}

    sa, sb = a.get("services") or {}, b.get("services") or {}
    g = groups["services"]
    for k in sa:
        if k not in sb:
            g.removed.append(k)
    g.added += [k for k in sb if k not in sa]
    r = groups["routes"]
    for k in sa:
        if k not in sb:
            continue
        fields: list[str] = []
        x, y = dict(sa[k]), dict(sb[k])
        ra, rb = x.pop("routes", []) or [], y.pop("routes", []) or []
        _leaves(x, y, "", fields)
        if fields:
            g.changed.append(f"{k}({', '.join(sorted({f.split('.')[0] for f in fields}))})")
        _compare(_by(ra, lambda rt: rt.get("name")), _by(rb, lambda rt: rt.get("name")), r, lambda n: f"{k}/{n}")
    for k in sb:
        if k not in sa:
            r.added += [f"{k}/{rt.get('name')}" for rt in sb[k].get("routes") or []]
    for k in sa:
        if k not in sb:
            r.removed += [f"{k}/{rt.get('name')}" for rt in sa[k].get("routes") or []]

    la, lb = dict(a.get("rate_limit") or {}), dict(b.get("rate_limit") or {})
    _compare(la, lb, groups["limits"], lambda k: f"rate_limit.{k}")

    aa, ab = dict(a.get("auth") or {}), dict(b.get("auth") or {})
    k = groups["auth keys"]
    _compare(_by(aa.pop("keys", []), lambda x: x.get("kid")), _by(ab.pop("keys", []), lambda x: x.get("kid")),
             k, lambda n: f"auth.keys.{n}")
    _compare(_by(aa.pop("jwks", []), lambda x: x.get("name") or x.get("url")),
             _by(ab.pop("jwks", []), lambda x: x.get("name") or x.get("url")), k, lambda n: f"auth.jwks.{n}")
    sa_, sb_ = aa.pop("jwt_secret", None), ab.pop("jwt_secret", None)
    if sa_ != sb_:
        (k.added if sa_ is None else k.removed if sb_ is None else k.changed).append("auth.jwt_secret")

    s = groups["settings"]
    rest_a = {n: v for n, v in a.items() if n not in ("services", "rate_limit", "auth")}
    rest_b = {n: v for n, v in b.items() if n not in ("services", "rate_limit", "auth")}
    rest_a["auth"], rest_b["auth"] = aa, ab
    _leaves(rest_a, rest_b, "", s.changed)

    fa, fb = old_files or {}, new_files or {}
    f = groups["files"]
    for name in fb:
        if name in fa and fa[name] != fb[name]:
            f.changed.append(name)
    return Summary(groups)


def _files(node: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(v, str) and (k == "file" or str(k).endswith("_file")):
                out[p] = v
            else:
                _files(v, p, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _files(v, f"{path}[{i}]", out)


def referenced_files(cfg) -> dict[str, str]:
    """``{field path: file name}`` of every ``file`` / ``*_file`` value in the config."""
    out: dict[str, str] = {}
    _files(to_printable(cfg), "", out)
    return out
