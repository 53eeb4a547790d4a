"""The metrics registry of one worker (L4).

Series are cells in a store: a flat array of numbers that only this worker writes.  In
the pre-fork runtime the store is the worker's slot in shared memory (``fastgw.shm``), so
the control process sums all workers at scrape time and an increment is one memory write
(no lock, no syscall).  Without a supervisor the store is a local list.  The per-request
series (request count, request and upstream durations) are accumulated in plain lists and
added to the store by ``publish`` on the worker's 1 s tick, so a scrape sees a request
at most a tick late.

A series key is its Prometheus name plus label set, e.g.
``fastgw_http_requests_total{route="svg-parser-0",service="svg-parser",method="GET",code="200"}``;
histograms use ``_bucket{...,le="..."}`` keys (per-bucket counts, cumulated when
rendered) and ``_sum``.  A histogram's ``_count`` is not stored: it is the sum of its
buckets, and the renderer (``obs.prom``) derives it from them for both stores, so the hot
path saves one array write per histogram.  Labels are bounded: route and service names,
method, status code, error kind; never paths or user ids.  The ``METRICS`` table is the
reference (name, type, help, labels) used by the renderer and by docs/metrics.md.
"""

from __future__ import annotations

from bisect import bisect_left

from fastgw.clock import monotonic

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})

# name -> (type, help, label names)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fastgw_http_requests_total": ("counter", "Requests answered, by route, service, method and status code.",
                                   ("route", "service", "method", "code")),
    "fastgw_http_request_duration_seconds": ("histogram", "Time from the complete request head to the end of the response.",
                                             ("route",)),
    "fastgw_upstream_request_duration_seconds": ("histogram", "Time from sending the request upstream to its response head.",
                                                 ("service",)),
    "fastgw_http_requests_in_flight": ("gauge", "Requests being processed (each worker publishes its count on its 1 s tick).", ()),
    "fastgw_downstream_connections_open": ("gauge", "Open client connections.", ()),
    "fastgw_downstream_lingering_connections": ("gauge", "Client connections in a lingering close (counted in the open ones too).", ()),
    "fastgw_downstream_lingering_closes_total": ("counter", "Lingering closes after an early answer, by how they ended (client, time, size).", ("end",)),
    "fastgw_upstream_connections_total": ("counter", "Upstream connection events (created, reused, closed).", ("event",)),
    "fastgw_upstream_errors_total": ("counter", "Upstream failures by service and kind.", ("service", "kind")),
    "fastgw_upstream_retries_total": (
        "counter", "Retries of a failed attempt on another instance, by service and reason.", ("service", "reason")),
    "fastgw_upstream_retry_budget_exhausted_total": (
        "counter", "Retries refused because the service's retry budget was spent.", ("service",)),
    "fastgw_discovery_failures_total": (
        "counter", "DNS discovery lookups that failed (the last good instance set is kept), by service.", ("service",)),
    "fastgw_upstream_instance_requests_total": (
        "counter", "Attempts sent to the instance (first attempts and retries; each worker adds its count on its 1 s tick).",
        ("service", "instance")),
    "fastgw_upstream_panic_total": (
        "counter", "Picks made in panic mode (too few usable instances: all of them used).", ("service",)),
    "fastgw_circuit_breaker_transitions_total": (
        "counter", "Circuit-breaker transitions by service and the state entered (open, half_open, closed).",
        ("service", "to")),
    "fastgw_upstream_pool_exhausted_total": ("counter", "503s because an upstream pool was full: its wait queue "
                                             "(reason=queue_full) or the wait (reason=wait_timeout).",
                                             ("upstream", "reason")),
    "fastgw_worker_restarts_total": ("counter", "Workers respawned by the supervisor.", ()),
    "fastgw_config_reloads_total": ("counter", "Config reloads by result (ok, failed).", ("result",)),
    "fastgw_build_info": ("gauge", "Build information.", ("version", "python")),
    "fastgw_auth_decisions_total": ("counter", "Authentication decisions by route and result.", ("route", "result")),
    "fastgw_jwt_cache_total": ("counter", "Verified-token cache lookups by result (hit, miss).", ("result",)),
    "fastgw_jwks_refresh_total": ("counter", "JWKS fetches by result.", ("result",)),
    "fastgw_session_refresh_total": ("counter", "Refresh endpoint calls by result (ok, grace, reuse, invalid, revoked, limited, full).", ("result",)),
    "fastgw_session_rotations_refused_total": ("counter", "Refresh rotations refused (503) because the rotations' share of the revocation table is full: alert on any increase.", ()),
    "fastgw_session_logout_total": ("counter", "Logout endpoint calls by result (ok, invalid).", ("result",)),
    "fastgw_revocation_redis_errors_total": ("counter", "Failed Redis operations of the shared revocation set (the local set keeps holding).", ("op",)),
    "fastgw_ratelimit_decisions_total": ("counter", "Rate-limit decisions by limit and result.", ("limit", "result")),
    "fastgw_ratelimit_table_slots": ("gauge", "Slots in the shared-memory rate-limit table.", ()),
    "fastgw_ratelimit_table_occupied_slots": ("gauge", "Rate-limit table slots holding a key still refilling (estimated above 8192 slots).", ()),
    "fastgw_ratelimit_table_evictions_total": ("counter", "New rate-limit keys that pushed out a key still refilling.", ()),
    "fastgw_ratelimit_table_reclaims_total": ("counter", "New rate-limit keys placed in a stale slot.", ()),
    "fastgw_ratelimit_lock_recoveries_total": ("counter", "Rate-limit stripe locks taken over from a worker that died holding them.", ()),
    "fastgw_ratelimit_lock_timeouts_total": ("counter", "Rate-limit decisions taken without charging because a stripe lock stayed busy past 0.2 s.", ()),
    "fastgw_compression_responses_total": ("counter", "Responses compressed, by algorithm.", ("algorithm",)),
    "fastgw_compression_input_bytes_total": ("counter", "Body bytes fed to the compressor, by algorithm.", ("algorithm",)),
    "fastgw_compression_output_bytes_total": ("counter", "Compressed body bytes sent, by algorithm.", ("algorithm",)),
    "fastgw_compression_skipped_total": ("counter", "Responses on compressing routes sent uncompressed, by reason.", ("reason",)),
    "fastgw_redis_errors_total": ("counter", "Redis calls that failed (timeout, connection, error reply), by backend host:port.", ("backend",)),
    "fastgw_ratelimit_redis_fallback_total": ("counter", "Rate-limit decisions taken without Redis, by rate_limit.redis.on_error mode (open: let through, closed: 503).", ("mode",)),
    "fastgw_deprecated_requests_total": ("counter", "Requests to a deprecated API version, by route, version, outcome "
                                         "(served, gone) and client (authenticated, anonymous, unknown).",
                                         ("route", "version", "outcome", "client")),
    "fastgw_mirror_requests_total": ("counter", "Mirrored request copies by route and result (the shadow's status class, "
                                     "error, timeout, dropped, skipped).", ("route", "result")),
    "fastgw_transform_skipped_total": ("counter", "JSON bodies passed through untransformed, by direction (request, "
                                       "response) and reason (not_json, compressed, too_large).", ("direction", "reason")),
    "fastgw_transform_headers_dropped_total": ("counter", "Transform headers removed because a variable was absent or "
                                               "held a control character, by direction.", ("direction",)),
    "fastgw_transform_path_refused_total": ("counter", "Requests refused (500) because a path rewrite produced an "
                                            "invalid path or a dot segment, by route.", ("route",)),
    "fastgw_tracing_spans_total": ("counter", "Sampled spans by result (exported, dropped_queue_full, dropped_export_failed).",
                                   ("result",)),
    "fastgw_cache_lookups_total": ("counter", "Response-cache lookups by result (hit, miss, stale, revalidated, bypass, "
                                   "expired).", ("result",)),
    "fastgw_cache_objects": ("gauge", "Responses held in a worker's cache.", ("worker",)),
    "fastgw_cache_bytes": ("gauge", "Bytes held in a worker's cache (bodies, heads and per-entry overhead).", ("worker",)),
    "fastgw_cache_stored_total": ("counter", "Responses stored in a worker's cache.", ("worker",)),
    "fastgw_cache_stored_bytes_total": ("counter", "Bytes stored in a worker's cache.", ("worker",)),
    "fastgw_cache_evicted_total": ("counter", "Responses evicted from a worker's cache to make room.", ("worker",)),
    "fastgw_cache_evicted_bytes_total": ("counter", "Bytes evicted from a worker's cache to make room.", ("worker",)),
}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_key(name: str, labels) -> str:
    if not labels:
        return name
    if isinstance(labels, dict):
        labels = labels.items()
    return name + "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels) + "}"


class LocalStore:
    """A store for a single process: cells in a Python list.

    Store API: ``cell(key)`` an integer cell, ``fcell(key)`` a float cell (histogram
    sums), ``ints``/``floats`` the indexable arrays behind them (the hot path writes
    ``ints[i] += 1`` directly: no call), ``add``/``set`` for everything else.
    """

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.values: list[float] = []
        self.ints = self.values
        self.floats = self.values

    def cell(self, key: str) -> int:
        i = self.keys.get(key)
        if i is None:
            i = self.keys[key] = len(self.values)
            self.values.append(0)
        return i

    fcell = cell

    def add(self, i: int, v: float = 1) -> None:
        self.values[i] += v

    def set(self, i: int, v: float) -> None:
        self.values[i] = v

    def snapshot(self) -> dict[str, float]:
        return {k: self.values[i] for k, i in self.keys.items()}


class Metrics:
    """The worker's registry: generic ``inc``/``observe``/``set`` plus the hot-path shortcuts."""

    def __init__(self, store=None) -> None:
        self.store = store if store is not None else LocalStore()
        self._cells: dict = {}
        self._req: dict = {}  # route -> status -> method -> cells (request_done)
        self._nreq = 0         # entries in _req
        self._pool: dict = {}
        # request_done's counts and sums, accumulated in plain lists and added to the
        # store by ``publish`` (the worker tick): a list item += costs less than half a
        # shared-memory memoryview item +=, and these are written on every request.
        # _acc_i/_acc_f[j] belongs to store cell _cell_i/_cell_f[j] (several accumulators
        # may add to one cell).  The request counter has no accumulator of its own: each
        # (route, service, method, code) series has its own request-duration bucket
        # accumulators (added to the route's buckets), and ``publish`` adds their sum to
        # the series' counter (``_counted``: (counter cell, its bucket accumulators)), so
        # a request costs one count less.
        self._acc_i: list[int] = []
        self.counts = self._acc_i   # (``counter``)
        self._acc_f: list[float] = []
        self._cell_i: list[int] = []
        self._cell_f: list[int] = []
        self._local: dict = {}  # (kind, store cell) -> accumulator index
        self._fans: dict = {}   # (int cells) -> the accumulator of ``counter(*cells)``
        self._fanned: list = []  # (accumulator index, the cells after its first) (``counter``)
        self._keyed: dict = {}  # counter cell -> its bucket accumulators (_request_cells)
        self._counted: list = []
        self._inflight = self.store.cell("fastgw_http_requests_in_flight")
        self._conns = self.store.cell("fastgw_downstream_connections_open")

    # generic API (middlewares) ------------------------------------------------
    def inc(self, name: str, labels=(), value: float = 1) -> None:
        k = (name, labels if not isinstance(labels, dict) else tuple(labels.items()))
        c = self._cells.get(k)
        if c is None:
            c = self._cells[k] = self.store.cell(series_key(name, k[1]))
        self.store.add(c, value)

    def set(self, name: str, labels=(), value: float = 0) -> None:
        k = (name, labels if not isinstance(labels, dict) else tuple(labels.items()))
        c = self._cells.get(k)
        if c is None:
            c = self._cells[k] = self.store.cell(series_key(name, k[1]))
        self.store.set(c, value)

    def _hist(self, name: str, labels: tuple):
        """(bucket int cells, sum float cell) of one histogram series (``_count`` is derived)."""
        k = ("h", name, labels)
        h = self._cells.get(k)
        if h is None:
            cell = self.store.cell
            buckets = tuple(cell(series_key(name + "_bucket", labels + (("le", repr(b)),))) for b in DURATION_BUCKETS)
            inf = cell(series_key(name + "_bucket", labels + (("le", "+Inf"),)))
            h = self._cells[k] = (buckets + (inf,), self.store.fcell(series_key(name + "_sum", labels)))
        return h

    def observe(self, name: str, labels: tuple, value: float) -> None:
        buckets, s = self._hist(name, labels)
        self.store.ints[buckets[bisect_left(DURATION_BUCKETS, value)]] += 1
        self.store.floats[s] += value

    # hot path: direct array writes, no calls ---------------------------------------
    def set_inflight(self, n: int) -> None:
        """The in-flight gauge, published by the worker tick from the engine's own count
        (a per-request increment and decrement of a shared cell cost a call and two
        memoryview read-modify-writes per request; a gauge sampled once a second is as good for a
        scrape every few seconds)."""
        self.store.ints[self._inflight] = n

    def request_done(self, ctx) -> None:
        # One cached flat tuple per (route, status, method) holds every accumulator this
        # writes (published to the store on the tick).  The cache is nested dicts rather
        # than a dict keyed by a tuple: three dict subscripts cost fewer instructions than
        # building, hashing and comparing a key tuple (callgrind).  The module docstring
        # says why there is no _count write.
        try:
            cells = self._req[ctx.route][ctx.status][ctx.request.method]
        except KeyError:
            cells = self._request_cells(ctx.route, ctx.request.method, ctx.status)
        buckets, dsum, ubuckets, usum = cells
        iv = self._acc_i
        fv = self._acc_f
        d = monotonic() - ctx.start
        iv[buckets[bisect_left(DURATION_BUCKETS, d)]] += 1
        fv[dsum] += d
        ud = ctx.upstream_duration
        if ud is not None and ubuckets is not None:
            iv[ubuckets[bisect_left(DURATION_BUCKETS, ud)]] += 1
            fv[usum] += ud

    def _request_cells(self, route, method: str, status: int) -> tuple:
        """The cells of ``request_done`` for (route, method, status), cached in ``_req``."""
        self._nreq += 1
        if self._nreq > 4096:  # routes of retired configs, odd methods: stay bounded
            self._req.clear()
            self._nreq = 1
        rname = route.name if route is not None else "-"
        svc = route.service if route is not None else "-"
        label = method if method in KNOWN_METHODS else "OTHER"
        req = self.store.cell(series_key("fastgw_http_requests_total",
                                         (("route", rname), ("service", svc), ("method", label), ("code", str(status)))))
        buckets, dsum = self._hist("fastgw_http_request_duration_seconds", (("route", rname),))
        if route is not None:
            ubuckets, usum = self._hist("fastgw_upstream_request_duration_seconds", (("service", svc),))
        else:
            ubuckets = usum = None
        acc = self._accumulator
        counted = self._keyed.get(req)
        if counted is None:
            # this series' own accumulators for the route's buckets (see __init__)
            ai, ci = self._acc_i, self._cell_i
            counted = self._keyed[req] = tuple(range(len(ai), len(ai) + len(buckets)))
            ai.extend([0] * len(buckets))
            ci.extend(buckets)
            self._counted.append((req, counted))
        cells = (counted, acc(1, dsum),
                 None if ubuckets is None else tuple(acc(0, c) for c in ubuckets),
                 None if usum is None else acc(1, usum))
        self._req.setdefault(route, {}).setdefault(status, {})[method] = cells
        return cells

    def counter(self, cell: int, *more: int) -> int:
        """The index in ``counts`` of a plain-int accumulator that ``publish`` (the worker
        tick) adds to the store's int cell ``cell`` (and to each of ``more``: counters
        that a hot path always moves together, e.g. both limits' allowed counts, take
        one ``+=``): a hot path's ``counts[j] += 1`` costs a list item instead of a
        shared-memory cell, and a scrape sees it at most one tick late."""
        if not more:
            return self._accumulator(0, cell)
        key = (cell, *more)
        j = self._fans.get(key)
        if j is None:
            # an accumulator of its own (not the one of ``cell`` alone), and its other cells
            acc = self._acc_i
            j = self._fans[key] = len(acc)
            acc.append(0)
            self._cell_i.append(cell)
            self._fanned.append((j, more))
        return j

    def _accumulator(self, kind: int, cell: int) -> int:
        """The accumulator index of store cell ``cell`` (kind 0: int, 1: float), made on first use."""
        j = self._local.get((kind, cell))
        if j is None:
            acc, cells = (self._acc_i, self._cell_i) if kind == 0 else (self._acc_f, self._cell_f)
            j = self._local[(kind, cell)] = len(acc)
            acc.append(0 if kind == 0 else 0.0)
            cells.append(cell)
        return j

    def publish(self) -> None:
        """Add the accumulated request counts and durations to the store (the worker
        tick, and once more before the worker exits): a scrape sees requests at most one
        tick late, as the in-flight gauge."""
        store = self.store
        ints = store.ints
        get = self._acc_i.__getitem__
        for cell, counted in self._counted:
            n = sum(map(get, counted))
            if n:
                ints[cell] += n
        for j, more in self._fanned:    # (added to their first cell below)
            n = get(j)
            if n:
                for cell in more:
                    ints[cell] += n
        for acc, cells, view in ((self._acc_i, self._cell_i, store.ints), (self._acc_f, self._cell_f, store.floats)):
            for j, v in enumerate(acc):
                if v:
                    view[cells[j]] += v
                    acc[j] = 0

    def conn_open(self, delta: int) -> None:
        self.store.ints[self._conns] += delta

    def upstream_error(self, route, kind: str) -> None:
        self.inc("fastgw_upstream_errors_total", (("service", route.service if route else "-"), ("kind", kind)))

    def upstream_retry(self, service: str, reason: str) -> None:
        self.inc("fastgw_upstream_retries_total", (("service", service), ("reason", reason)))

    def retry_budget_exhausted(self, service: str) -> None:
        self.inc("fastgw_upstream_retry_budget_exhausted_total", (("service", service),))

    def upstream_panic(self, route) -> None:
        self.inc("fastgw_upstream_panic_total", (("service", route.service),))

    def publish_pools(self, pools) -> None:
        """Tick: add the pools' connection reuses (counted as plain ints on the hot path)."""
        n = 0
        for pool in pools:
            n += pool.take_reused()
        if n:
            self.pool_event("reused", n)

    def publish_instances(self, instances) -> None:
        """Tick: add each instance's attempts (counted as plain ints on the hot path)."""
        for inst in instances:
            n = inst.requests - inst.counted   # (``requests`` only grows: balancing reads it too)
            if n:
                inst.counted = inst.requests
                self.inc("fastgw_upstream_instance_requests_total",
                         (("service", inst.service), ("instance", inst.label)), n)

    def pool_exhausted(self, upstream: str, reason: str) -> None:
        """A pool answered 503 (queue full or wait timed out)."""
        self.inc("fastgw_upstream_pool_exhausted_total", (("upstream", upstream), ("reason", reason)))

    def pool_event(self, event: str, n: int = 1) -> None:
        c = self._pool.get(event)
        if c is None:
            c = self._pool[event] = self.store.cell(
                series_key("fastgw_upstream_connections_total", (("event", event),)))
        self.store.add(c, n)
