"""The per-worker response store (L2): a byte-accounted LRU of ``Entry`` objects.

Why our own and not ``cachetools.LRUCache``: the size function of cachetools is called
on every insert only, while an entry's size is fixed here, and its ``popitem`` does not
tell us what was evicted in bytes for the metrics; an ``OrderedDict`` with
``move_to_end`` is what cachetools itself uses underneath, with one Python call less
per hit.

Keys: ``(primary, vary values)``.  ``primary`` is the route's key (method class,
scheme, host, normalised path, configured query and headers); the ``Vary`` names of the
last response stored under a primary key are kept in ``vary_of`` so that a lookup knows
which request headers make the secondary part before it finds an entry.

Recency: a used entry moves to the recent end of the LRU once per version of the store
(``version`` changes with every put or removal, the only moments that evict), not on
every hit: an entry hit over and over between two stores costs one ``move_to_end``.
Among the entries used since the last change, eviction follows their first use after
it rather than their last; every one of them is still more recent than an entry not
used since, so the approximation only reorders entries of the same period.

Purges: ``purge_url`` (host + path, any query), ``purge_prefix`` (path prefix on any
host, or ``host/prefix``) and ``purge_tag`` walk the entries: they are rare, admin-driven
writes, so lookups carry no index for them.
"""

from __future__ import annotations

from collections import OrderedDict

from fastgw.clock import monotonic
from fastgw.http.wire import Prebuilt, header_lines

ENTRY_OVERHEAD = 512  # bytes counted per entry besides its head and body (objects, key)


class Entry:
    """One stored response.  Immutable once stored (a revalidation stores a new one),
    except for ``touched`` (recency, see the module header), ``key`` (set when it is
    stored) and the hit memo: ``hot`` is the answer a hit sends (``http.wire.Prebuilt``:
    the stored head, ``Age`` and ``Cache-Status``, serialised, and the body) and
    ``hot_until`` the monotonic time before which those two values stay what ``hot``
    says (both are whole seconds), so hits within one second of each other format
    nothing (``middleware.cache``)."""

    __slots__ = ("status", "headers", "body", "stored", "age0", "ttl", "swr", "sie", "no_stale",
                 "etag", "last_modified", "tags", "host", "path", "size", "expires", "hot", "hot_until", "touched",
                 "key")

    def __init__(self, status: int, headers: list, body: bytes, stored: float, age0: float, ttl: float,
                 swr: float, sie: float, no_stale: bool, etag, last_modified, tags: frozenset,
                 host: str, path: str) -> None:
        self.status = status
        self.headers = headers  # the stored head, without Age, framing and hop-by-hop
        self.body = body
        self.stored = stored    # monotonic time of storage
        self.age0 = age0        # corrected initial age (seconds) at storage
        self.ttl = ttl          # freshness lifetime
        self.swr = swr
        self.sie = sie
        self.no_stale = no_stale  # must-revalidate / proxy-revalidate / no-cache
        self.etag = etag
        self.last_modified = last_modified
        self.tags = tags
        self.host = host
        self.path = path
        self.size = ENTRY_OVERHEAD + len(body) + len(header_lines(headers))  # (joined in C)
        self.expires = stored - age0 + ttl  # monotonic time it stops being fresh (age == ttl)
        self.hot = None
        self.hot_until = 0.0
        self.touched = -1  # the store's version when it was last moved to the recent end
        self.key = None    # its key in the store (Store.put)

    def age(self, now: float) -> float:
        return self.age0 + (now - self.stored)

    def heat(self, now: float) -> Prebuilt:
        """``hot`` for a hit at ``now`` (fresh: ``now < expires``), remade when the whole
        seconds of ``Age`` or of the remaining lifetime changed since it was made."""
        base = self.stored - self.age0
        age = now - base
        left = self.ttl - age
        a = int(age)
        ttl = int(left)
        # the first moment either whole number changes: age reaches a + 1, or the
        # remaining lifetime drops below ttl (age passes self.ttl - ttl)
        self.hot_until = min(base + (a + 1), base + (self.ttl - ttl))
        hot = self.hot = Prebuilt(self.status, self.headers + [
            (b"Age", b"%d" % a), (b"Cache-Status", b"fastgw; hit; ttl=%d" % ttl)], self.body)
        return hot


def _host_is(have: str, want: str | None) -> bool:
    """``want`` None: any host; a host without a port matches it on any port."""
    return want is None or have == want or (":" not in want and have.rpartition(":")[0] == want)


class Store:
    """LRU over entries, bounded by ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self.entries: OrderedDict = OrderedDict()
        self.vary_of: dict = {}
        self.evicted = 0
        self.evicted_bytes = 0
        self.stored = 0
        self.stored_bytes = 0
        self.purge_seen = -1  # the purge log's generation applied (shm.purge), -1: not yet
        self.inflight: dict = {}  # key -> waiters of the fetch in progress (coalescing)
        self.version = 0  # bumped by every change (the metrics publish only after one)
        self.published = -1  # the version last published as metrics
        # the hit path's memo (middleware.cache): request target -> (middleware, host,
        # scheme, (primary, key, entry)); emptied by every change, so it never holds an
        # entry the store dropped, and an entry it gives is the one the key finds
        self.memo: dict = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key):
        e = self.entries.get(key)
        if e is not None and e.touched != self.version:
            self.entries.move_to_end(key)
            e.touched = self.version
        return e

    def touch(self, key, e: Entry) -> None:
        """``e`` (under ``key``) was used: move it to the recent end, once per version of
        the store (see the module header)."""
        if e.touched != self.version:
            self.entries.move_to_end(key)
            e.touched = self.version

    def put(self, key, entry: Entry) -> None:
        if entry.size > self.limit:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self.entries[key] = entry
        entry.key = key
        self.version += 1
        self.memo.clear()
        self.bytes += entry.size
        self.vary_of[key[0]] = key[1][0] if key[1] else ()
        self.stored += 1
        self.stored_bytes += entry.size
        while self.bytes > self.limit:
            _k, e = self.entries.popitem(last=False)
            self.bytes -= e.size
            self.evicted += 1
            self.evicted_bytes += e.size

    def remove(self, key) -> None:
        e = self.entries.pop(key, None)
        if e is not None:
            self.bytes -= e.size
            self.version += 1
            self.memo.clear()

    def _drop(self, pred) -> int:
        gone = [k for k, e in self.entries.items() if pred(e)]
        for k in gone:
            self.remove(k)
        return len(gone)

    def purge_url(self, host: str | None, path: str) -> int:
        return self._drop(lambda e: e.path == path and _host_is(e.host, host))

    def purge_prefix(self, host: str | None, prefix: str) -> int:
        return self._drop(lambda e: e.path.startswith(prefix) and _host_is(e.host, host))

    def purge_tag(self, tag: str) -> int:
        return self._drop(lambda e: tag in e.tags)

    def clear(self) -> None:
        self.entries.clear()
        self.vary_of.clear()
        self.memo.clear()
        self.bytes = 0
        self.version += 1


def make_entry(status, headers, body, cc, ttl, age0, swr, sie, host, path, f) -> Entry:
    """The entry for a stored head ``headers`` with Cache-Control ``cc``, lifetime
    ``ttl`` and initial age ``age0``; ``f`` its fields (``rules.fields``); ``swr`` and
    ``sie`` the route's stale-while-revalidate and stale-if-error (the longer of them and
    the response's directives applies)."""
    swr_d = _secs(cc.get("stale-while-revalidate"))
    sie_d = _secs(cc.get("stale-if-error"))
    tags = NO_TAGS
    ct, sk = f.get(b"cache-tag"), f.get(b"surrogate-key")
    if ct is not None or sk is not None:
        v = (ct or b"") + b" " + (sk or b"")
        tags = frozenset(t.decode("latin-1") for t in v.replace(b",", b" ").split())
    return Entry(status, headers, body, monotonic(), age0, ttl,
                 max(swr, swr_d), max(sie, sie_d),
                 "no-cache" in cc or "must-revalidate" in cc or "proxy-revalidate" in cc,
                 f.get(b"etag"), f.get(b"last-modified"), tags, host, path)


NO_TAGS: frozenset = frozenset()


def _secs(v) -> float:
    try:
        return float(int(v)) if v is not None else 0.0
    except ValueError:
        return 0.0
