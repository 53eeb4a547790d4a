"""The cache purge log (L2): what ``POST /admin/cache/purge`` asks every worker to drop.

One writer, the control process (the admin API); every worker reads.  Layout: one
8-byte generation cell on its own cache line, then ``SLOTS`` records of ``RECORD``
bytes: ``[Q generation][B kind][H length][text]``.  The writer fills the record of
generation g+1 (slot ``(g+1) % SLOTS``), then publishes g+1 in the generation cell.

A worker keeps the last generation it applied (per store).  Every cache lookup compares
it with the cell (one shared-memory load) and applies the records in between before it
looks anything up, so once the admin call returned, no worker answers with a purged
entry.  A reader that fell more than ``SLOTS`` records behind, or finds a record
overwritten under it (its generation moved), clears its whole store: over-purging is
safe, a missed purge is not.
"""

from __future__ import annotations

import struct

from fastgw.shm.layout import ALIGN

SLOTS = 64
RECORD = 512
MAX_TEXT = RECORD - 16
KINDS = ("url", "prefix", "tag")
_HDR = struct.Struct("<QBH")


def size() -> int:
    return ALIGN + SLOTS * RECORD


class PurgeLog:
    __slots__ = ("_mm", "_q", "_gen", "_base")

    def __init__(self, mm, q: memoryview, offset: int) -> None:
        self._mm = mm
        self._q = q
        self._gen = offset // 8
        self._base = offset + ALIGN

    @property
    def generation(self) -> int:
        return self._q[self._gen]

    def cell(self) -> tuple:
        """``(q, i)``: the generation cell in its hot-path form, ``q[i]`` (a reader's
        compare without a Python call; ``apply`` when it moved)."""
        return self._q, self._gen

    def publish(self, kind: str, text: str) -> int:
        """Control process only: append one purge; returns its generation."""
        raw = text.encode("utf-8")
        if len(raw) > MAX_TEXT:
            raise ValueError(f"purge value longer than {MAX_TEXT} bytes")
        g = self._q[self._gen] + 1
        off = self._base + (g % SLOTS) * RECORD
        self._mm[off + _HDR.size:off + _HDR.size + len(raw)] = raw
        self._mm[off:off + _HDR.size] = _HDR.pack(g, KINDS.index(kind), len(raw))
        self._q[self._gen] = g
        return g

    def records(self, since: int):
        """``(generation, [(kind, text)...] | None)``: the purges after ``since``; None
        means "clear everything" (fell behind or a record was overwritten)."""
        g = self._q[self._gen]
        if g == since:
            return g, []
        if g - since > SLOTS:
            return g, None
        out = []
        for i in range(since + 1, g + 1):
            off = self._base + (i % SLOTS) * RECORD
            rg, kind, n = _HDR.unpack_from(self._mm, off)
            text = bytes(self._mm[off + _HDR.size:off + _HDR.size + n]).decode("utf-8", "replace")
            if rg != i or _HDR.unpack_from(self._mm, off)[0] != i:
                return g, None
            out.append((KINDS[kind], text))
        return g, out

    def apply(self, store) -> None:
        """Bring ``store`` (a ``fastgw.cache.store.Store``) up to the log (hot path: one
        load when nothing is new)."""
        seen = store.purge_seen
        if seen == self._q[self._gen]:
            return
        if seen < 0:  # a new store: purges made before it existed do not apply
            store.purge_seen = self._q[self._gen]
            return
        g, recs = self.records(seen)
        store.purge_seen = g
        if recs is None:
            store.clear()
            return
        for kind, text in recs:
            apply_one(store, kind, text)


def apply_one(store, kind: str, text: str) -> int:
    """Drop what one purge names: ``url`` (absolute, or a path on any host; any query),
    ``prefix`` (a path prefix, or ``host/prefix`` / an absolute URL prefix), ``tag``."""
    if kind == "tag":
        return store.purge_tag(text)
    host, path = split_url(text)
    if kind == "url":
        return store.purge_url(host, path)
    return store.purge_prefix(host, path)


def split_url(text: str) -> tuple[str | None, str]:
    """``"https://h/p?q"`` -> ("h", "/p"); ``"/p"`` -> (None, "/p")."""
    if "://" in text:
        rest = text.split("://", 1)[1]
        host, slash, path = rest.partition("/")
        return host.lower(), ("/" + path.split("?", 1)[0]) if slash else "/"
    return None, text.split("?", 1)[0] or "/"
