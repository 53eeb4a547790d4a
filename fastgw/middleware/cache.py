"""The response cache (L6, issue 21): RFC 9111 shared-cache behaviour on the routes that
enable it, over a per-worker byte-accounted LRU (``fastgw.cache.store``).

Where it sits (``middleware/registry``): after auth, RBAC, rate limits, validation and
request transforms, just before compression.  So a hit is never served to a client the
route would refuse, hits count against limits, and the key's ``Vary`` part is read on
the request as it goes upstream (``fastgw.cache.keys``).  Compression comes after it in
the request order, so on the way back compression's response filter and body filter run
*before* the cache's (response filters and body filters both run in reverse chain
order, ``pipeline.chain``): what is stored is the variant the client got, compressed or
not, keyed by the coding compression negotiates; a hit, a local reply made here, passes
only through the filters of the middlewares before this one, so it is not compressed
twice.  Per-request decorations (request id, CORS, security and rate-limit headers, the
Ctx's header operations, ``Cache-Status``) are applied after this filter, on hits as on
misses, and never stored.

Hooks:

1. ``request_filter`` (synchronous; it returns a coroutine only to wait for a coalesced
   fetch, which the engine then drives like an async hook): key, request
   Cache-Control, lookup.  A fresh entry (or a stale one the request or
   ``stale-while-revalidate`` allows) is answered as a ``Reply`` with ``Age`` and
   ``Cache-Status``; a conditional request matching it gets a 304.  ``only-if-cached``
   without an entry gets a 504.  A stale entry with validators is revalidated
   (``If-None-Match``/``If-Modified-Since`` upstream).  Concurrent misses of one key wait
   for the first one's response (``coalesce_wait``), then go upstream themselves if it
   was not stored.

   The hit path, for a plain GET/HEAD (none of Cache-Control, Pragma, the validators or
   the unkeyed override headers) that finds a fresh entry, is the top of
   ``request_filter`` read straight down: the entry comes from ``Store.memo`` when the
   target was hit since the store last changed, the answer from the entry's memo
   (``Entry.hot``, an ``http.wire.Prebuilt``: status line, stored head, ``Age``,
   ``Cache-Status`` and body, serialised once per second), the hit is counted by one
   metric array write, and no per-request state is made (no ``_St``: ``response_filter``
   and ``logging`` return at once).  On a route where no response filter before the
   cache would see the hit (``direct``), that ``Prebuilt`` is the answer: the engine
   adds the exchange's Date, Server, response lines and framing and writes it once
   (``Engine.send_local``); elsewhere it becomes a ``Reply`` the filters decorate.
   Everything else is ``_lookup``, with the same rules.
2. ``response_filter``: decides whether the upstream's response may be stored
   (``fastgw.cache.rules``), snapshots its head, adds ``Cache-Status``; a 304 to a
   revalidation refreshes the entry and answers with it; an upstream failure is answered
   with a stale entry within ``stale-if-error``; a successful unsafe method invalidates
   the URL (RFC 9111 4.4).
3. ``response_body_filter``: collects the body of a storable response (up to
   ``max_object_size``; past it, the collection stops and the rest streams through).
4. ``logging``: releases coalesced waiters, counts the lookup result.

Purges (``POST /admin/cache/purge``) arrive through the shared-memory purge log
(``fastgw.shm.purge``): every lookup first compares the purge generation (one shared
memory load) and applies the new records, so once the admin call returned no worker
serves a purged entry.  Background fetches (``stale-while-revalidate``, ``cache.warm``)
go straight to the service's first instance over a plain HTTP/1.1 connection
(``fastgw.cache.fetch``).
"""

from __future__ import annotations

import asyncio
import time

from fastgw.cache import keys as K
from fastgw.cache.background import BackgroundFetches
from fastgw.cache.rules import NOT_STORED as _NOT_STORED, SKIP_STORE as _SKIP_STORE, RequestCC, fields, fields_of, \
    initial_age, lifetime, not_modified, parse_cc, vary_names, why_not_stored
from fastgw.cache.fetch import first_instance as _first_instance, route_has as _route_has
from fastgw.cache.store import Entry, Store, make_entry
from fastgw.clock import monotonic
from fastgw.compress.negotiate import Negotiator
from fastgw.config.cache import effective_cache
from fastgw.config.compression import effective_compression
from fastgw.http.messages import Reply, ResponseHead
from fastgw.http.wire import Prebuilt
from fastgw.obs.metrics import series_key
from fastgw.pipeline.heads import WHOLE_BODY_NOTE
from fastgw.pipeline.middleware import Middleware

NOTE = "cache"
RESULT_NOTE = "cache_result"  # read by the access log
# an upstream answer that counts as an error for stale-if-error (RFC 5861 section 4)
_ERROR_STATUS = frozenset({500, 502, 503, 504})
# a 304 carries these from the stored response (RFC 9110 15.4.5)
_IN_304 = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary",
                     b"last-modified"})
_M_LOOKUP = "fastgw_cache_lookups_total"
_M_OBJECTS = "fastgw_cache_objects"
_M_BYTES = "fastgw_cache_bytes"
_M_STORED = "fastgw_cache_stored_total"
_M_STORED_B = "fastgw_cache_stored_bytes_total"
_M_EVICTED = "fastgw_cache_evicted_total"
_M_EVICTED_B = "fastgw_cache_evicted_bytes_total"
_STATE = "cache.store"  # deps.state key: the worker's store, kept across reloads
_RESULT_LABELS = {r: (("result", r),) for r in ("hit", "miss", "stale", "revalidated", "bypass", "expired")}
_PLAIN_RCC = RequestCC(None, None)  # a request without Cache-Control or Pragma (read only)
# the request fields that change a lookup (RFC 9111 5.2.1, 5.4; RFC 9110 13.1)
_REQUEST_FIELDS = frozenset({b"cache-control", b"pragma", b"if-none-match", b"if-modified-since"})
_new = object.__new__
# the hit path's key memo (Store.memo): targets kept, and the longest target kept (as
# the engine's match cache)
_MEMO_SIZE = 1024
_MEMO_TARGET = 512


class _St:
    """One request's cache state (``ctx.notes["cache"]``)."""

    __slots__ = ("key", "primary", "result", "fwd", "hit", "stale", "reval", "nostore", "authed",
                 "waiters", "buf", "size", "meta", "t_req", "body304")

    def __init__(self) -> None:
        self.key = None
        self.primary = None
        self.result = "bypass"
        self.fwd = b"bypass"
        self.hit = False
        self.stale = None     # a stale entry (stale-if-error, revalidation)
        self.reval = False    # validators were sent upstream
        self.nostore = False  # the request said no-store
        self.authed = False
        self.waiters = None   # list of futures when this request owns a coalesced fetch
        self.buf = None       # body pieces of a storable response
        self.size = 0
        self.meta = None      # (status, headers, cc, ttl, names) of the response being stored
        self.t_req = 0.0
        self.body304 = None   # the stored body sent after a revalidating 304


class Cache(BackgroundFetches, Middleware):
    name = "cache"

    def __init__(self, eff, deps, negotiate, service_cfg=None, route_cfg=None, warm=()) -> None:
        super().__init__(eff, deps)
        state = deps.state if deps is not None else {}
        store = state.get(_STATE)
        if store is None:
            store = state[_STATE] = Store(eff.memory)
        store.limit = eff.memory
        self.store = store
        self.inflight = store.inflight
        self.query = eff.query
        self.key_headers = tuple(h.encode("latin-1") for h in eff.headers)
        self.strip = K.UNKEYED_OVERRIDES - frozenset(self.key_headers)
        # a request naming none of these takes request_filter's hit path
        self.watch = self.strip | _REQUEST_FIELDS
        self.negotiate = negotiate
        self.max_object = eff.max_object_size
        self.default_ttl = eff.default_ttl
        self.swr = eff.swr
        self.sie = eff.sie
        self.store_set_cookie = eff.store_set_cookie
        self.wait = eff.coalesce_wait
        # a hit may be answered with the entry's prebuilt bytes (``Prebuilt``) when no
        # response filter would see it: found on the first hit (``_hot_reply``), since
        # the route's chain is compiled after its middlewares are made; None until then
        self.direct = None
        self.metrics = getattr(deps, "metrics", None)
        # a hit is counted by one array write into the store's cell of the series
        # ``metrics.inc(_M_LOOKUP, hit)`` writes (the store API's hot-path form:
        # ``ints[cell] += 1``); without metrics, into a list of its own
        mstore = getattr(self.metrics, "store", None)
        if mstore is not None:
            self.hit_ints = mstore.ints
            self.hit_cell = mstore.cell(series_key(_M_LOOKUP, _RESULT_LABELS["hit"]))
        else:
            self.hit_ints, self.hit_cell = [0], 0
        self.worker = (("worker", str(getattr(deps, "worker_id", 0))),)
        shm = getattr(deps, "shm", None)
        self.purge = getattr(shm, "purge", None) if shm is not None else None
        # the purge generation, read per lookup without a call (``PurgeLog.cell``)
        self.purge_q, self.purge_i = self.purge.cell() if self.purge is not None else (None, 0)
        self.upstream = _first_instance(service_cfg)
        self.route = getattr(route_cfg, "name", None) or ""
        self.tasks: set = set()
        loop = getattr(deps, "loop", None)
        if loop is not None and warm and self.upstream is not None and route_cfg is not None:
            for url in warm:
                if _route_has(route_cfg, url):
                    self._spawn(loop, self._warm(url))

    def leaves_log_notes(self) -> bool:
        return True   # ``cache_result`` (RESULT_NOTE)

    # ------------------------------------------------------------------ lookup
    def request_filter(self, ctx):
        """Synchronous: a hit, a bypass and a miss are decided without suspending.  A miss
        that joins a coalesced fetch returns a coroutine that waits for it: the engine
        drives it like an async hook (``Engine._drive``), so the usual request pays
        no coroutine."""
        req = ctx.request
        store = self.store
        if self.purge is not None and store.purge_seen != self.purge_q[self.purge_i]:
            self.purge.apply(store)
        method = req.method
        if method == "GET" or method == "HEAD":
            # The hit path: a plain request (no Cache-Control, Pragma, validators or
            # unkeyed override headers: nothing to strip, the request's directives are
            # the defaults), read straight down; anything else goes to _lookup.  (A loop
            # rather than isdisjoint over two maps or the header dict: fewer instructions
            # on a request of a few headers, callgrind.)
            watch = self.watch
            for n, _v in req.headers:
                if n.lower() in watch:
                    return self._lookup(ctx, store, False, None, None, None)
            # the entry of a target hit since the store last changed (``Store.memo``: a
            # store that has not changed maps that target to that entry, already moved
            # to the recent end and published, since both are once per version)
            raw = req.raw_target
            m = store.memo.get(raw)
            if m is not None and m[0] is self and m[1] == req.host and m[2] == ctx.scheme:
                e = m[3]
            else:
                if self.key_headers:
                    prim = K.primary(ctx, self.route, self.query, self.key_headers)
                else:
                    q = req.query
                    prim = (self.route, "G", ctx.scheme, req.host, req.path,
                            K.query_part(q, self.query) if q else b"", ())
                names = store.vary_of.get(prim)
                key = (prim, K.secondary(ctx, names, self.negotiate) if names else ())
                e = store.entries.get(key)
                if e is None:
                    return self._lookup(ctx, store, True, prim, key, None)
                if e.touched != store.version:  # (Store.touch)
                    store.touch(key, e)
                if store.version != store.published:
                    self._publish()
                if not names and not self.key_headers and len(raw) <= _MEMO_TARGET:
                    # (no Vary, no keyed header: the target, host and scheme are the key)
                    memo = store.memo
                    if len(memo) >= _MEMO_SIZE:
                        memo.clear()
                    memo[raw] = (self, req.host, ctx.scheme, e)
            now = monotonic()  # (not ctx.start: an async hook before may have waited)
            hot = e.hot if now < e.hot_until else e.heat(now) if now < e.expires else None
            if hot is not None:
                ctx.notes[RESULT_NOTE] = "hit"
                self.hit_ints[self.hit_cell] += 1
                if self.direct and ctx.resp_drop is None:
                    return hot  # (sent as prebuilt bytes: engine.send_local)
                return self._hot_reply(ctx, hot)
            key = e.key
            return self._lookup(ctx, store, True, key[0], key, e)
        return self._lookup(ctx, store, False, None, None, None)

    def _hot_reply(self, ctx, hot: Prebuilt):
        """A hit's answer where ``hot`` cannot go out as it is: a ``Reply`` of its own
        header list, which the response filters edit.  The first hit also finds out
        whether this route can take ``hot`` itself (``direct``)."""
        if self.direct is None:
            self.direct = self._no_filters_before(ctx.route.chain)
            if self.direct and ctx.resp_drop is None:
                return hot
        # (a Reply without its class call: the fields Reply.__init__ sets)
        r = _new(Reply)
        r.status = hot.status
        r.headers = hot.headers.copy()  # the response filters edit their own list
        r.body = hot.body
        r.kind = ""
        return r

    def _no_filters_before(self, chain) -> bool:
        """True when a local reply made here meets no response filter but this one's
        (which a hit skips): no middleware before the cache in ``chain`` has one."""
        mine = next(i for i, m in enumerate(chain.mws) if m is self)
        return all(getattr(fn, "__self__", None) is self for i, fn in chain.response if i <= mine)

    def _lookup(self, ctx, store, plain: bool, prim, key, e):
        """Everything but the plain hit.  ``plain``: the request is a plain GET/HEAD whose
        key (``prim``, ``key``) and entry ``e`` (None: none) were found already."""
        req = ctx.request
        st = _St()
        ctx.notes[NOTE] = st
        if plain:
            rcc = _PLAIN_RCC
        else:
            if req.method != "GET" and req.method != "HEAD":
                st.fwd = b"method"
                ctx.notes[RESULT_NOTE] = "bypass"
                return None
            cc_hdr = ctx.header(b"cache-control")
            pragma = ctx.header(b"pragma")
            rcc = _PLAIN_RCC if cc_hdr is None and pragma is None else RequestCC(cc_hdr, pragma)
            if not self.strip.isdisjoint(req.header_map()):  # (one C set operation when none was sent)
                ctx.remove_request_headers(self.strip)
            prim = K.primary(ctx, self.route, self.query, self.key_headers)
            key = (prim, K.secondary(ctx, store.vary_of.get(prim, ()), self.negotiate))
        st.key = key
        st.primary = prim
        st.authed = ctx.user is not None or req.authorization is not None
        st.t_req = monotonic()
        if rcc.no_store:
            st.nostore = True
            st.fwd = b"request"
            ctx.notes[RESULT_NOTE] = "bypass"
            return None
        if not plain:
            e = store.get(key)
        elif e is not None:
            store.touch(key, e)
        if e is not None:
            now = st.t_req
            age = e.age(now)
            left = e.ttl - age
            if not rcc.no_cache:
                if left > rcc.min_fresh and (rcc.max_age is None or age <= rcc.max_age):
                    return self._hit(ctx, st, e, age, left, "hit", b"")
                if left <= 0 and not e.no_stale:
                    over = -left
                    if rcc.max_stale is not None and over <= rcc.max_stale:
                        return self._hit(ctx, st, e, age, left, "stale", b"")
                    if over <= e.swr and rcc.max_age is None and rcc.min_fresh == 0 and self._refresh(ctx, key):
                        return self._hit(ctx, st, e, age, left, "stale", b"; detail=stale-while-revalidate")
            st.stale = e
            st.result = "expired" if left <= 0 else "miss"
            st.fwd = b"request" if rcc.no_cache else b"stale"
            if (e.etag is not None or e.last_modified is not None) and req.method == "GET" \
                    and ctx.header(b"if-none-match") is None and ctx.header(b"if-modified-since") is None:
                st.reval = True
                if e.etag is not None:
                    ctx.set_request_header(b"If-None-Match", e.etag)
                else:
                    ctx.set_request_header(b"If-Modified-Since", e.last_modified)
        else:
            st.result = "miss"
            st.fwd = b"vary-miss" if key[1] else b"miss"
            if rcc.only_if_cached:
                ctx.notes[RESULT_NOTE] = "miss"
                return ctx.problem(504, "the response is not in the cache (only-if-cached)", kind="cache_miss")
        ctx.notes[RESULT_NOTE] = st.result
        if st.reval or rcc.no_cache:
            return None
        # coalescing: the first miss of a key fetches, the others wait for it
        waiters = self.inflight.get(key)
        if waiters is None:
            self.inflight[key] = st.waiters = []
            return None
        loop = asyncio.get_running_loop()
        w = loop.create_future()
        waiters.append(w)
        return self._coalesced(ctx, st, prim, rcc, w, loop.call_later(self.wait, _give_up, w))

    async def _coalesced(self, ctx, st, prim, rcc, w, h):
        """Wait for the fetch this miss joined (at most ``coalesce_wait``): its entry if it
        stored one this request may have and it is fresh enough for this request (the
        lookup's test: an entry stored already stale, from an upstream whose Date or Age
        is old, or a request's ``max-age``/``min-fresh`` it does not meet, is not a hit),
        else None (the request goes upstream)."""
        got = await w
        h.cancel()
        if got is not None:
            store = self.store
            e = store.get((prim, K.secondary(ctx, store.vary_of.get(prim, ()), self.negotiate)))
            if e is got:
                age = e.age(monotonic())
                left = e.ttl - age
                if left > rcc.min_fresh and (rcc.max_age is None or age <= rcc.max_age):
                    return self._hit(ctx, st, e, age, left, "hit", b"; detail=coalesced")
        st.fwd = b"miss"
        return None

    def _hit(self, ctx, st, e: Entry, age: float, left: float, result: str, detail: bytes) -> Reply:
        st.hit = True
        st.result = result
        ctx.notes[RESULT_NOTE] = result
        cs = b"fastgw; hit; ttl=%d%s" % (int(left), detail)
        if not_modified(ctx.header(b"if-none-match"), ctx.header(b"if-modified-since"), e.etag, e.last_modified):
            hs = [(n, v) for n, v in e.headers if n.lower() in _IN_304]
            hs.append((b"Age", b"%d" % int(age)))
            hs.append((b"Cache-Status", cs))
            return Reply(304, hs)
        hs = e.headers.copy()
        hs.append((b"Age", b"%d" % int(age)))
        hs.append((b"Cache-Status", cs))
        return Reply(e.status, hs, e.body)

    # ------------------------------------------------------------------ response
    def response_filter(self, ctx, head) -> None:
        st = ctx.notes.get(NOTE)
        if st is None or st.hit:
            return
        req = ctx.request
        if head.__class__ is not ResponseHead:
            # a local reply: our 504, or an error in place of the upstream's answer
            e = st.stale
            err = ctx.error
            if e is not None and err is not None and err.source == "upstream" and self._may_serve_stale(e):
                age = e.age(monotonic())
                head.status = e.status
                head.headers = e.headers.copy()
                head.headers.append((b"Age", b"%d" % int(age)))
                head.headers.append((b"Cache-Status", b"fastgw; hit; ttl=%d; detail=stale-if-error"
                                     % int(e.ttl - age)))
                head.body = e.body
                head.kind = ""
                st.result = "stale"
                ctx.notes[RESULT_NOTE] = "stale"
            else:
                head.headers.append((b"Cache-Status", b"fastgw; fwd=%s" % st.fwd))
            self._release(st, None)
            return
        status = head.status
        if req.method != "GET" and req.method != "HEAD":
            if status < 400:
                self.store.purge_url(req.host, req.path)  # RFC 9111 4.4
            head.add(b"Cache-Status", b"fastgw; fwd=method")
            return
        if st.reval and status == 304:
            self._revalidated(ctx, st, head)
            return
        if status in _ERROR_STATUS and st.stale is not None and self._may_serve_stale(st.stale):
            self._stale_if_error(ctx, st, head)
            return
        # the head is read once: the fields the rules need, by one regex over its raw
        # block (no parse into a list unless the response is stored)
        f = fields(head.block())
        cc = parse_cc(f.get(b"cache-control"))
        ttl = lifetime(cc, f, self.default_ttl)
        why = "request-no-store" if st.nostore else why_not_stored(
            status, f, cc, st.authed, self.store_set_cookie, ttl)
        if why is None and req.method == "HEAD":
            why = "head"
        if why is None:
            cl = f.get(b"content-length")
            if cl is not None and cl.isdigit() and int(cl) > self.max_object:
                why = "too-large"
        fwd = st.fwd
        if why is None:
            names = vary_names(f)
            if b"accept-encoding" in names and self.negotiate is not None and ctx.notes.get("content_encoding") is None:
                ce = f.get(b"content-encoding")
                if ce is not None and ce.strip().lower() not in (b"", b"identity"):
                    names = tuple(sorted(K.AE_RAW if n == b"accept-encoding" else n for n in names))
            stored = [h for h in head.headers if h[0].lower() not in _NOT_STORED]
            now = _wall_now()
            st.meta = (status, stored, cc, ttl if ttl is not None else 0.0, names,
                       initial_age(f, now, now - (monotonic() - st.t_req)), f)
            st.buf = []
            head.extend(((b"Cache-Status", b"fastgw; fwd=%s; fwd-status=%d; stored" % (fwd, status)),))
        else:
            if st.result == "expired" or st.result == "miss":
                st.result = "bypass" if why in ("request-no-store", "authorization", "private", "no-store") \
                    else st.result
            ctx.notes[RESULT_NOTE] = st.result
            head.extend(((b"Cache-Status", b"fastgw; fwd=%s; fwd-status=%d; detail=%s" % (fwd, status, why.encode())),))
            self._release(st, None)

    def _stale_if_error(self, ctx, st, head) -> None:
        """An upstream 500/502/503/504 while a stale entry is within ``stale-if-error``
        (RFC 5861 section 4: "an error is any situation that would result in a 500, 502,
        503, or 504 HTTP response status code being returned"): the client gets the entry;
        the upstream's body is read and dropped (``response_body_filter``)."""
        e = st.stale
        age = e.age(monotonic())
        cs = b"fastgw; fwd=%s; fwd-status=%d; ttl=%d; detail=stale-if-error" % (st.fwd, head.status, int(e.ttl - age))
        head.status = e.status
        head.headers = e.headers + [(b"Age", b"%d" % int(age)), (b"Cache-Status", cs)]
        head.drop_length()  # the entry's body replaces the upstream's, sent whole with its length
        st.body304 = e.body
        ctx.notes[WHOLE_BODY_NOTE] = True
        st.result = "stale"
        ctx.notes[RESULT_NOTE] = "stale"
        self._release(st, None)

    def _revalidated(self, ctx, st, head) -> None:
        """A 304 to our validators: refresh the stored entry with the 304's fields and
        answer the client with it (RFC 9111 4.3.4)."""
        e = st.stale
        fresh = {n.lower(): v for n, v in head.headers if n.lower() not in _SKIP_STORE}
        merged = [(n, fresh.pop(n.lower(), v)) for n, v in e.headers]
        merged.extend((n, v) for n, v in head.headers if n.lower() in fresh)
        f = fields_of(merged)
        cc = parse_cc(f.get(b"cache-control"))
        ttl = lifetime(cc, f, self.default_ttl) or 0.0
        now = _wall_now()
        ne = make_entry(e.status, merged, e.body, cc, ttl, initial_age(fields_of(head.headers), now, now),
                    self.swr, self.sie, e.host, e.path, f)
        self.store.put(st.key, ne)
        st.result = "revalidated"
        ctx.notes[RESULT_NOTE] = "revalidated"
        head.status = 200
        head.headers = merged + [(b"Age", b"0"), (b"Cache-Status", b"fastgw; fwd=stale; fwd-status=304")]
        st.body304 = e.body
        ctx.notes[WHOLE_BODY_NOTE] = True  # the stored body goes out whole, with its length
        self._release(st, ne)

    def response_body_filter(self, ctx, chunk: bytes, end: bool) -> bytes:
        st = ctx.notes.get(NOTE)
        if st is None:
            return chunk
        if st.body304 is not None:
            # the stored body replaces the upstream's (after a revalidating 304, or an
            # upstream error answered stale): the upstream's own bytes are dropped
            if end:
                body, st.body304 = st.body304, None
                return body if ctx.request.method != "HEAD" else b""
            return b""
        buf = st.buf
        if buf is None:
            return chunk
        if chunk:
            st.size += len(chunk)
            if st.size > self.max_object:
                st.buf = None
                self._release(st, None)
                return chunk
            buf.append(chunk)
        if end:
            st.buf = None
            e = self._store(ctx, st, b"".join(buf))
            self._release(st, e)
        return chunk

    def _store(self, ctx, st, body: bytes) -> Entry | None:
        status, headers, cc, ttl, names, age0, f = st.meta
        req = ctx.request
        e = make_entry(status, headers, body, cc, ttl, age0, self.swr, self.sie, req.host, req.path, f)
        key = (st.primary, K.secondary(ctx, names, self.negotiate))
        self.store.put(key, e)
        if key != st.key:
            self.store.remove(st.key)
        return e

    def _may_serve_stale(self, e: Entry) -> bool:
        over = e.age(monotonic()) - e.ttl
        return not e.no_stale and over <= e.sie

    def _release(self, st, entry) -> None:
        waiters = st.waiters
        if waiters is None:
            return
        st.waiters = None
        if self.inflight.get(st.key) is waiters:
            del self.inflight[st.key]
        for w in waiters:
            if not w.done():
                w.set_result(entry)

    # ------------------------------------------------------------------ logging
    def logging(self, ctx, error) -> None:
        st = ctx.notes.get(NOTE)
        if st is None:
            return
        self._release(st, None)
        m = self.metrics
        if m is not None:
            m.inc(_M_LOOKUP, _RESULT_LABELS.get(st.result) or (("result", st.result),))
            self._publish()

    def _publish(self) -> None:
        s = self.store
        if s.version == s.published:
            return
        s.published = s.version
        m = self.metrics
        wl = self.worker
        m.set(_M_OBJECTS, wl, len(s))
        m.set(_M_BYTES, wl, s.bytes)
        m.set(_M_STORED, wl, s.stored)
        m.set(_M_STORED_B, wl, s.stored_bytes)
        m.set(_M_EVICTED, wl, s.evicted)
        m.set(_M_EVICTED_B, wl, s.evicted_bytes)

    def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()


def _give_up(w) -> None:
    if not w.done():
        w.set_result(None)


_wall_now = time.time


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's cache middleware, or None when the route does not cache."""
    if route_cfg is None:
        return None
    eff = effective_cache(getattr(root_cfg, "cache", None), getattr(service_cfg, "cache", None),
                          getattr(route_cfg, "cache", None))
    if eff is None:
        return None
    comp = effective_compression(getattr(root_cfg, "compression", None), getattr(service_cfg, "compression", None),
                                 getattr(route_cfg, "compression", None))
    negotiate = Negotiator(comp.algorithms).choose if comp is not None else None
    top = getattr(root_cfg, "cache", None)
    return Cache(eff, deps, negotiate, service_cfg, route_cfg, tuple(top.warm) if top is not None else ())
