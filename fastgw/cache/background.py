"""The response cache's own upstream fetches, as the cache middleware uses them (L5):
``stale-while-revalidate``'s background refresh (one per entry; misses of the key that
arrive meanwhile wait for it) and ``cache.warm``'s fetches, each stored by the same
RFC 9111 rules as a response that passed through (``fastgw.cache.rules``).

``BackgroundFetches`` is a mixin of ``fastgw.middleware.cache.Cache``: it reads the
middleware's settings and store (``upstream``, ``store``, ``inflight``, ``tasks``,
``route``, ``query``, ``key_headers``, ``negotiate``, ``default_ttl``, ``max_object``,
``store_set_cookie``, ``swr``, ``sie``).  The I/O itself is ``fastgw.cache.fetch``.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from fastgw.cache import keys as K
from fastgw.cache.fetch import fetch as _fetch
from fastgw.cache.rules import NOT_STORED, fields_of, initial_age, lifetime, parse_cc, vary_names, why_not_stored
from fastgw.cache.store import Entry, make_entry
from fastgw.http.normalize import normalize_path
from fastgw.http.wire import header_lines

# what a background refresh does not copy from the request it refreshes for
_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
                  b"proxy-connection", b"host", b"content-length"})
_wall_now = time.time


class BackgroundFetches:
    __slots__ = ()

    def _spawn(self, loop, coro) -> None:
        t = loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _refresh(self, ctx, key) -> bool:
        """stale-while-revalidate: one background fetch per entry; False when none can
        be made (a TLS upstream): then the request goes upstream itself."""
        if self.upstream is None:
            return False
        if key in self.inflight:
            return True  # a refresh (or a miss) is under way: serve stale meanwhile
        self.inflight[key] = []
        req = ctx.request
        target = req.path.encode("latin-1") + (b"?" + req.query if req.query else b"")
        lines = header_lines([h for h in ctx.fwd if h[0].lower() not in _HOP]) + ctx.up_lines
        self._spawn(asyncio.get_running_loop(), self._background(ctx, key, target, lines))
        return True

    async def _background(self, ctx, key, target: bytes, lines: bytes) -> None:
        e = None
        try:
            got = await _fetch(self.upstream, target, lines)
            if got is not None:
                e = self._store_fetched(key[0], got, lambda names: K.secondary(ctx, names, self.negotiate),
                                        ctx.request.host, ctx.request.path)
        finally:
            for w in self.inflight.pop(key, None) or ():  # misses that joined meanwhile
                if not w.done():
                    w.set_result(e)

    async def _warm(self, url: str) -> None:
        u = urlsplit(url)
        path, _enc = normalize_path(u.path.encode("latin-1") or b"/")
        query = u.query.encode("latin-1")
        host = u.netloc.lower()
        prim = (self.route, "G", u.scheme, host, path, K.query_part(query, self.query), (None,) * len(self.key_headers))
        target = path.encode("latin-1") + (b"?" + query if query else b"")
        got = await _fetch(self.upstream, target, b"")
        if got is not None:
            neg = self.negotiate

            def secondary(names):
                if not names:
                    return ()
                return (names, tuple(("identity" if neg is not None else None) if n == b"accept-encoding" else None
                                     for n in names))
            self._store_fetched(prim, got, secondary, host, path)

    def _store_fetched(self, prim, got, secondary, host: str, path: str) -> Entry | None:
        status, hs, body, t0 = got
        f = fields_of(hs)
        cc = parse_cc(f.get(b"cache-control"))
        ttl = lifetime(cc, f, self.default_ttl)
        if why_not_stored(status, f, cc, False, self.store_set_cookie, ttl) is not None or len(body) > self.max_object:
            return None
        names = vary_names(f)
        stored = [h for h in hs if h[0].lower() not in NOT_STORED]
        e = make_entry(status, stored, body, cc, ttl or 0.0, initial_age(f, _wall_now(), t0), self.swr, self.sie,
                   host, path, f)
        self.store.put((prim, secondary(names)), e)
        return e
