"""Value templates over a request (L4): ``$variable`` text compiled once per config into
parts, rendered per request from the ``Ctx``.  The transform middleware's header and
query values use them (``config.transform`` validates the text: ``TEMPLATE_RE``,
``VARIABLES``, ``$jwt.<claim>``, ``$$`` for a ``$``).

Rules: a compiled template is a tuple of bytes (constant text, and the variables that are
constant for the route) and getters ``fn(ctx) -> str | None``, adjacent constants joined,
so a constant value is one bytes part and costs nothing per request; ``render`` gives
None when a variable is absent or holds a control character, and the caller then leaves
the header (or query key) out rather than writing it.
"""

from __future__ import annotations

import os
import re

from fastgw.config.transform import TEMPLATE_RE

_CTL = re.compile(r"[\x00-\x1f\x7f]").search


def _claim(name: str):
    def get(ctx):
        c = ctx.claims
        if c is None:
            return None
        v = c.get(name)
        if v is None or v.__class__ in (dict, list):
            return None
        if v.__class__ is bool:
            return "true" if v else "false"
        return v if v.__class__ is str else str(v)
    return get


def _trace_id(ctx):
    t = ctx.notes.get("trace")
    return t[1] if t is not None else None


GETTERS = {
    "request_id": lambda ctx: ctx.request_id or None,
    "remote_addr": lambda ctx: ctx.client_ip or None,
    "host": lambda ctx: ctx.request.host or None,
    "scheme": lambda ctx: ctx.scheme,
    "upstream_addr": lambda ctx: ctx.upstream or None,
    "worker_pid": lambda ctx: str(os.getpid()),
    "trace_id": _trace_id,
}


def compile_template(value: str, consts: dict) -> tuple:
    """A header value as a tuple of parts: bytes (constant text, and the variables that
    are constant for the route: ``consts``) and getters ``fn(ctx) -> str | None``.
    Adjacent constants are joined, so a constant value is one bytes part."""
    parts: list = []
    pos = 0

    def const(b: bytes) -> None:
        if parts and parts[-1].__class__ is bytes:
            parts[-1] += b
        elif b:
            parts.append(b)

    for m in TEMPLATE_RE.finditer(value):
        const(value[pos:m.start()].encode())
        pos = m.end()
        name = m.group(1)
        if name == "$":
            const(b"$")
        elif name in consts:
            const(consts[name].encode())
        elif name.startswith("jwt."):
            parts.append(_claim(name[4:]))
        else:
            parts.append(GETTERS[name])
    const(value[pos:].encode())
    return tuple(parts) or (b"",)


def render(ctx, parts: tuple) -> bytes | None:
    """The value of a compiled template for this request, or None when a variable is
    absent or holds a control character (the header is then removed, not written)."""
    out = b""
    for p in parts:
        if p.__class__ is bytes:
            out += p
            continue
        v = p(ctx)
        if v is None or _CTL(v):
            return None
        out += v.encode()
    return out
