"""Traffic mirroring: a fire-and-forget copy of a route's requests to a shadow service (L6).

What it owns (schema and rules in ``fastgw.config.mirror``): in ``request_filter``, the
last request hook of the chain (so only requests the gateway accepted are copied), for a
sampled request whose method is listed, it builds the copy's bytes and hands them to a
task that connects to the shadow, writes them, reads the status line and closes.  The
filter always returns None: the client's request goes on at once and its response never
waits for, or depends on, the copy.

Rules:
- bounded: at most ``max_in_flight`` copies per worker and route are under way; more are
  dropped (counted ``dropped``), so a slow or dead shadow costs a fixed amount of memory
  and sockets.  Each copy has one deadline (``timeout``) for connect, write and status line;
- the copy: same method, path and query (under the shadow URL's base path), the request
  headers minus hop-by-hop ones, ``Host``, ``Content-Length`` and (unless
  ``keep_credentials``) ``Authorization`` and ``Cookie``; ``Host`` is the shadow's;
  ``X-Forwarded-For`` gets the client address; ``Connection: close``;
- a body is copied when the whole body arrived with the head (the exchange's ``pending`` body) and is at
  most ``max_body_size``; a longer or streamed body skips the copy (``skipped``);
- results only in ``fastgw_mirror_requests_total{route, result}``: ``2xx``..``5xx`` by the
  shadow's status class, ``error`` (connect/reset/bad answer), ``timeout``, ``dropped``,
  ``skipped``.

One task per copy is the price of not delaying the client (the copy's network work must
outlive the request); sampling (``percent``) and the in-flight bound keep it small.  The
copy uses its own short-lived connection (``Connection: close``), not the upstream pools:
a shadow's slowness can never hold a pooled connection that real traffic needs.
"""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

from fastgw.config.mirror import MirrorConfig
from fastgw.pipeline.middleware import Middleware

M_MIRROR = "fastgw_mirror_requests_total"  # {route, result} (obs.metrics.METRICS)
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade", b"proxy-authorization", b"host",
                  b"content-length", b"expect", b"x-forwarded-for"})
_CREDENTIALS = frozenset({b"authorization", b"cookie"})
_MAX_STATUS_LINE = 1024


class Mirror(Middleware):
    name = "mirror"

    def __init__(self, cfg: MirrorConfig, deps, route: str, url: str) -> None:
        super().__init__(cfg, deps)
        u = urlsplit(url)
        self.host = u.hostname
        self.port = u.port or 80
        self.base = (u.path or "").rstrip("/")
        authority = u.netloc.rpartition("@")[2]
        self._host_line = b"host: " + authority.encode("latin-1") + b"\r\n"
        self.methods = frozenset(cfg.methods) | ({"HEAD"} if "GET" in cfg.methods else set())
        self.fraction = cfg.percent / 100.0
        self._drop = _HOP if cfg.keep_credentials else _HOP | _CREDENTIALS
        self.max_body = int(cfg.max_body_size)
        self.max_in_flight = cfg.max_in_flight
        self.timeout = float(cfg.timeout)
        self.in_flight = 0
        self._tasks: set = set()  # the copies under way (the loop keeps only weak references)
        self._metrics = getattr(deps, "metrics", None)
        self._labels = {r: (("route", route), ("result", r))
                        for r in ("1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout", "dropped", "skipped")}

    def _count(self, result: str) -> None:
        m = self._metrics
        if m is not None:
            m.inc(M_MIRROR, self._labels[result])

    def request_filter(self, ctx):
        """Maybe start a copy (module doc); always None."""
        if ctx.request.method not in self.methods or (self.fraction < 1.0 and random.random() >= self.fraction):
            return None
        loop = self.deps.loop if self.deps is not None else None
        if loop is None:
            return None
        if self.in_flight >= self.max_in_flight:
            self._count("dropped")
            return None
        data = self._copy(ctx)
        if data is None:
            self._count("skipped")
            return None
        self.in_flight += 1
        task = loop.create_task(self._send(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    def _copy(self, ctx) -> bytes | None:
        """The copy's bytes, or None when its body is not all at hand or too long."""
        body = b""
        if ctx.request.chunked:
            return None
        n = ctx.request.content_length or 0
        if n:
            if n > self.max_body or not ctx.pending:
                return None
            body = b"".join(ctx.pending)
            if len(body) != n:
                return None
        target = (self.base + ctx.request.path).encode("latin-1")
        if ctx.request.query:
            target += b"?" + ctx.request.query
        drop = self._drop
        lines = [ctx.request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n", self._host_line]
        for name, value in ctx.request.headers:
            if name.lower() not in drop:
                lines += (name, b": ", value, b"\r\n")
        lines += (b"x-forwarded-for: ", ctx.client_ip.encode("ascii", "replace"), b"\r\nconnection: close\r\n")
        if body or ctx.request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"content-length: %d\r\n" % len(body))
        lines += (b"\r\n", body)
        return b"".join(lines)

    async def _send(self, data: bytes) -> None:
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(data)
                line = await reader.readuntil(b"\n")
            parts = line[:_MAX_STATUS_LINE].split(b" ", 2)
            code = parts[1] if len(parts) > 1 and parts[0].startswith(b"HTTP/") else b""
            self._count(code[:1].decode() + "xx" if len(code) == 3 and code[:1] in b"12345" else "error")
        except TimeoutError:
            self._count("timeout")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self._count("error")
        finally:
            self.in_flight -= 1
            if writer is not None:
                writer.close()



def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's mirror, or None when the route has no ``mirror``."""
    cfg = route_cfg.mirror if route_cfg is not None else None
    if cfg is None:
        return None
    url = root_cfg.services[cfg.service].upstreams()[0].url  # (semantics: exists, http://)
    return Mirror(cfg, deps, route_cfg.name or "-", url)
