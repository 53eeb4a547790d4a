"""``--print-config``: the effective config as YAML that ``--check`` accepts again.

Values are the effective ones (``${VAR:-default}`` resolved), with these exceptions for
secrets (``Secret`` fields: JWT secrets, HMAC keys, the admin token, the Redis URL):

- a secret that the file wrote as a ``${VAR}`` reference is printed as that reference,
  without its default (``${VAR:-dev-secret}`` prints as ``${VAR}``: a default is a
  literal secret too), and ``VAR`` is listed;
- a secret written literally is printed as ``${FASTGW_SECRET_<PATH>}`` (path upper-cased,
  non-alphanumerics as ``_``), and listed in a comment at the top: set those variables
  (to the literal values) before feeding the output to ``--check`` or a gateway.

Rule: no secret value is ever printed.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from fastgw.config.redact import to_printable

_MARK = "\x00secret\x00"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def _raw_at(raw: Any, path: list) -> Any:
    node = raw
    for seg in path:
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and isinstance(seg, int) and seg < len(node):
            node = node[seg]
        else:
            return None
    return node


def _where(path: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _var_name(path: list) -> str:
    return "FASTGW_SECRET_" + re.sub(r"[^A-Za-z0-9]+", "_", "_".join(str(p) for p in path)).strip("_").upper()


def _replace(node: Any, raw: Any, path: list, listed: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _replace(v, raw, path + [k], listed) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, raw, path + [i], listed) for i, v in enumerate(node)]
    if node == _MARK:
        orig = _raw_at(raw, path)
        if isinstance(orig, str) and "${" in orig:
            names = _REF.findall(orig)
            listed += [f"{n}: {_where(path)}" for n in names]
            return _REF.sub(lambda m: "${" + m.group(1) + "}", orig)   # a default may be a secret too
        name = _var_name(path)
        listed.append(f"{name}: {_where(path)}")
        return "${" + name + "}"
    return node


def render(cfg, raw: Any) -> str:
    """YAML of ``cfg``; ``raw`` is the file's data before substitution (see the module doc)."""
    listed: list[str] = []
    doc = _replace(to_printable(cfg, secret=lambda s: _MARK), raw, [], listed)
    head = ["# fastgw effective config (fastgw --print-config); secrets are ${VAR} references."]
    if listed:
        head.append("# Set these variables (to the secrets the file held) before using this output:")
        head += [f"#   {line}" for line in listed]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
