"""JSON body edits by JSON Pointer (RFC 6901), compiled once (L2).

``BodyPlan(cfg)`` takes a ``config.transform.BodyOps`` and applies, in this order,
``remove``, ``rename``, ``set``, ``unwrap`` and ``wrap`` to one whole body
(``apply(body) -> bytes | None``: None when the body is not JSON or ``unwrap`` finds
nothing, so the caller passes it through untouched).  Pointers are split into tokens at
config time (``~1`` is ``/``, ``~0`` is ``~``); ``set`` creates missing objects on its
way, an array index must exist (``-`` appends).  Used by the transform middleware.
"""

from __future__ import annotations

import orjson


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _parent(doc, tokens: list[str], create: bool):
    cur = doc
    for t in tokens[:-1]:
        if cur.__class__ is dict:
            nxt = cur.get(t)
            if nxt is None:
                if not create:
                    return None
                nxt = cur[t] = {}
            cur = nxt
        elif cur.__class__ is list and t.isdigit() and int(t) < len(cur):
            cur = cur[int(t)]
        else:
            return None
    return cur


_MISSING = object()


def _pop(doc, tokens: list[str]):
    p = _parent(doc, tokens, False)
    t = tokens[-1]
    if p.__class__ is dict:
        return p.pop(t, _MISSING)
    if p.__class__ is list and t.isdigit() and int(t) < len(p):
        return p.pop(int(t))
    return _MISSING


def _put(doc, tokens: list[str], value) -> None:
    p = _parent(doc, tokens, True)
    t = tokens[-1]
    if p.__class__ is dict:
        p[t] = value
    elif p.__class__ is list:
        if t == "-":
            p.append(value)
        elif t.isdigit() and int(t) < len(p):
            p[int(t)] = value


def _get(doc, tokens: list[str]):
    cur = doc
    for t in tokens:
        if cur.__class__ is dict:
            cur = cur.get(t, _MISSING)
        elif cur.__class__ is list and t.isdigit() and int(t) < len(cur):
            cur = cur[int(t)]
        else:
            return _MISSING
        if cur is _MISSING:
            return _MISSING
    return cur


class BodyPlan:
    """One side's JSON edits: applied in the order remove, rename, set, unwrap, wrap."""

    __slots__ = ("remove", "rename", "set", "unwrap", "wrap", "max_size")

    def __init__(self, cfg) -> None:
        self.remove = tuple(_tokens(p) for p in cfg.remove)
        self.rename = tuple((_tokens(a), _tokens(b)) for a, b in cfg.rename.items())
        self.set = tuple((_tokens(p), v) for p, v in cfg.set.items())
        self.unwrap = _tokens(cfg.unwrap) if cfg.unwrap is not None else None
        self.wrap = _tokens(cfg.wrap) if cfg.wrap is not None else None
        self.max_size = int(cfg.max_size)

    def apply(self, body: bytes) -> bytes | None:
        """The edited body, or None when it is not JSON (or ``unwrap`` finds nothing)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        for t in self.remove:
            _pop(doc, t)
        for a, b in self.rename:
            v = _pop(doc, a)
            if v is not _MISSING:
                _put(doc, b, v)
        for t, v in self.set:
            _put(doc, t, v)
        if self.unwrap is not None:
            doc = _get(doc, self.unwrap)
            if doc is _MISSING:
                return None
        if self.wrap is not None:
            out: dict = {}
            _put(out, self.wrap, doc)
            doc = out
        return orjson.dumps(doc)
