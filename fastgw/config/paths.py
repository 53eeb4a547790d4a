"""Paths in config messages, and how values read in them (L1).

A path is a tuple: ``str`` segments are mapping keys, ``int`` segments list indices.
``render`` gives ``services.svg-parser.routes[2].methods[0]``; ``parse_rel`` reads the
relative paths that a Struct's ``_check()`` yields (``"proxy_protocol.enabled"``,
``"methods[1]"``), or takes a tuple as it is (for keys that could contain dots).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

Path = tuple[str | int, ...]

_REL_PART = re.compile(r"([^\[\]]*)((?:\[\d+\])*)")


def render(path: Path) -> str:
    out = []
    for seg in path:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        else:
            out.append(f".{seg}" if out else seg)
    return "".join(out)


def show(v: Any) -> str:
    """A value as it reads in an error message (never used for Secret fields)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(str(v))
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (datetime.date, datetime.datetime)):
        return f"a date ({v}; quote it to make it a string)"
    return type(v).__name__


def parse_rel(rel: str | tuple) -> Path:
    if isinstance(rel, tuple):
        return rel
    out: list[str | int] = []
    for part in filter(None, rel.split(".")):
        m = _REL_PART.fullmatch(part)
        if m is None:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(out)
