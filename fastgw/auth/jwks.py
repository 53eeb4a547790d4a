"""A JWKS source: the identity provider's key set, kept fresh without blocking requests.

Rules:

1. Requests never wait on a scheduled refresh: one background task per source and worker
   refetches on the key set's lifetime (``Cache-Control: max-age`` clamped to
   [``min_refetch_interval``, ``refresh_interval``], else ``refresh_interval``), minus up
   to 10 % jitter so that workers drift apart.
2. A token naming an unknown ``kid`` may trigger a refetch, at most one per
   ``min_refetch_interval``; concurrent askers share the one fetch in flight (single
   flight); a fetch is bounded by ``timeout``.  Only that token's request waits; a slow
   JWKS server stalls nothing else.
3. An outage, an error status, a malformed document or a set with no usable key keeps the
   last good keys (counted and logged); retries back off 1 s, 2 s, ... up to 60 s.
4. ``ready`` turns True on the first good fetch and stays True (the last good keys remain
   usable); readiness reporting reads it.
5. A changed key set (by fingerprint: kid, algorithms, public key bytes) calls the
   ``listeners`` (the verified-token caches clear themselves); an unchanged one does not.
   ``fastgw_jwks_refresh_total{result}`` counts fetches: changed (the first good fetch
   included), unchanged, not_modified (304 to our If-None-Match), error.
6. The URL is the configured one, always: nothing in a token changes where we fetch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import weakref
from urllib.parse import urlsplit

import orjson

from fastgw.auth import fetch
from fastgw.auth.keys import EMPTY, BadKey, KeyIndex, key_from_jwk
from fastgw.clock import monotonic
from fastgw.config.auth import JwksSource as JwksConfig

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)")
_LIVE: weakref.WeakSet = weakref.WeakSet()
M_REFRESH = "fastgw_jwks_refresh_total"   # {result: changed | unchanged | not_modified | error}


def all_ready() -> bool:
    """True when every running JWKS source of this process has fetched a good key set."""
    return all(s.ready for s in list(_LIVE))


class JwksSource:
    def __init__(self, cfg: JwksConfig, *, log: logging.Logger | None = None, metrics=None) -> None:
        self.cfg = cfg
        self.name = cfg.name or (urlsplit(cfg.url).hostname or cfg.url)
        self.algorithms = tuple(cfg.algorithms)
        self.log = log or logging.getLogger("fastgw.auth")
        self.metrics = metrics
        self.index: KeyIndex = EMPTY
        self.ready = False
        self.listeners: set = set()          # callables run when the key set changes
        self.failures = 0                    # consecutive failed fetches
        self.fetches = 0                     # attempts, for tests and status
        self.last_attempt = -1e18            # monotonic time the last fetch started
        self.last_ok = None                  # monotonic time of the last good fetch
        self.last_error = ""
        self.lifetime = float(cfg.refresh_interval)
        self.etag: str | None = None
        self.refs = 0
        self._ssl = fetch.tls_context(cfg.ca_file) if cfg.url.lower().startswith("https:") else None
        self._inflight: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the background refresh task on ``loop`` (idempotent)."""
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"jwks:{self.name}")
            _LIVE.add(self)

    def stop(self) -> None:
        for t in (self._task, self._inflight):
            if t is not None and not t.done():
                t.cancel()
        self._task = None
        _LIVE.discard(self)

    async def _run(self) -> None:
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self.next_delay(ok))

    def next_delay(self, ok: bool) -> float:
        if ok:
            return self.lifetime * random.uniform(0.9, 1.0)
        back = min(2.0 ** max(self.failures - 1, 0), 60.0, float(self.cfg.refresh_interval))
        return max(back * random.uniform(0.9, 1.1), 0.05)

    # -- fetching ----------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Fetch now, or join the fetch in flight; True if it brought a good key set."""
        f = self._inflight
        if f is None or f.done():
            f = self._inflight = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(f)

    def refetch_for_unknown_kid(self):
        """An awaitable fetch when allowed now (or one already in flight), else None."""
        f = self._inflight
        if f is not None and not f.done():
            return asyncio.shield(f)
        if monotonic() - self.last_attempt < self.cfg.min_refetch_interval:
            return None
        return self.refresh()

    async def _fetch(self) -> bool:
        self.last_attempt = monotonic()
        self.fetches += 1
        cfg = self.cfg
        hdrs = {"If-None-Match": self.etag} if self.etag and self.ready else None
        try:
            resp = await fetch.get(cfg.url, timeout=cfg.timeout, max_size=cfg.max_size,
                                   ssl_ctx=self._ssl, headers=hdrs, allow_http=cfg.allow_http)
            if resp.status == 304 and self.ready:
                self._ok(resp, changed=False)
                self._count("not_modified")
                return True
            if resp.status != 200:
                raise fetch.FetchError(f"HTTP status {resp.status}")
            index = self._parse(resp.body)
        except fetch.FetchError as e:
            return self._failed(str(e))
        except Exception as e:  # noqa: BLE001 - a bug here must not end the refresh loop
            self.log.exception("jwks %s: unexpected error", self.name)
            return self._failed(f"{type(e).__name__}: {e}")
        changed = index.fingerprint != self.index.fingerprint
        if changed:
            self.index = index
        self._ok(resp, changed)
        self._count("changed" if changed else "unchanged")
        return True

    def _parse(self, body: bytes) -> KeyIndex:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise fetch.FetchError("response is not JSON") from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise fetch.FetchError("response has no 'keys' list")
        if len(keys) > self.cfg.max_keys:
            raise fetch.FetchError(f"{len(keys)} keys exceed max_keys={self.cfg.max_keys}")
        good = []
        for i, jwk in enumerate(keys):
            try:
                good.append(key_from_jwk(jwk, list(self.algorithms), f"jwks:{self.name}"))
            except BadKey as e:
                kid = jwk.get("kid") if isinstance(jwk, dict) else None
                self.log.info("jwks %s: key %d (kid=%r) skipped: %s", self.name, i, kid, e)
        if not good:
            raise fetch.FetchError("no usable key for the pinned algorithms")
        return KeyIndex(good, fetched=True)

    def _ok(self, resp, changed: bool) -> None:
        was_ready = self.ready
        self.ready = True
        self.failures = 0
        self.last_error = ""
        self.last_ok = monotonic()
        self.etag = resp.headers.get("etag") or self.etag
        m = _MAX_AGE.search(resp.headers.get("cache-control", ""))
        lo, hi = float(self.cfg.min_refetch_interval), float(self.cfg.refresh_interval)
        self.lifetime = min(max(float(m.group(1)), lo), hi) if m else hi
        if changed:
            if was_ready:
                self.log.warning("jwks %s: key set changed (%d keys)", self.name, len(self.index.keys))
            for cb in list(self.listeners):
                cb()

    def _failed(self, why: str) -> bool:
        self.failures += 1
        self.last_error = why
        self._count("error")
        self.log.warning("jwks %s: fetch failed (%d in a row), keeping %d last good keys: %s",
                         self.name, self.failures, len(self.index.keys), why)
        return False

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(M_REFRESH, (("result", result),), 1)

    def status(self) -> dict:
        return {"name": self.name, "ready": self.ready, "keys": len(self.index.keys),
                "failures": self.failures, "last_error": self.last_error}


class SourcePool:
    """The JWKS sources of one worker, shared by every config (reload) that names them.

    Reference-counted: a reload that keeps a source keeps its keys and its readiness; the
    last release stops its task.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, JwksSource] = {}

    def acquire(self, cfg: JwksConfig, *, loop=None, log=None, metrics=None) -> JwksSource:
        key = repr(cfg)
        src = self._by_key.get(key)
        if src is None:
            src = self._by_key[key] = JwksSource(cfg, log=log, metrics=metrics)
        src.refs += 1
        if loop is not None:
            src.start(loop)
        return src

    def release(self, src: JwksSource) -> None:
        src.refs -= 1
        if src.refs <= 0:
            src.stop()
            key = repr(src.cfg)
            if self._by_key.get(key) is src:
                del self._by_key[key]

    def sources(self) -> list[JwksSource]:
        return list(self._by_key.values())
