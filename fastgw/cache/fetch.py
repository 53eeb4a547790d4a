"""The cache's own upstream fetches (L2): warming (``cache.warm``) and the background
refresh of ``stale-while-revalidate``.  One GET on a new plain-HTTP connection to the
service's first instance, parsed with httptools; any failure is None (the cache then
simply keeps what it has).  The only I/O of ``fastgw.cache``."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httptools


def first_instance(service_cfg):
    """(host, port, base path, Host header) of the service's first instance, for the
    cache's own fetches; None for a TLS upstream or no instance."""
    if service_cfg is None:
        return None
    try:
        ups = service_cfg.upstreams()
    except Exception:
        return None
    if not ups:
        return None
    u = urlsplit(str(ups[0].url))
    if u.scheme != "http":
        return None
    return (u.hostname, u.port or 80, u.path.rstrip("/").encode("latin-1"), u.netloc.encode("latin-1"))


def route_has(route_cfg, url: str) -> bool:
    """Whether ``url``'s path falls under the route's path pattern (a plain path, a
    ``/prefix/*`` pattern or ``{param}`` segments; regex routes are not warmed)."""
    pat = route_cfg.path
    if not isinstance(pat, str):
        return False
    path = urlsplit(url).path or "/"
    if pat.endswith("/*"):
        base = pat[:-2]
        return path == base or path.startswith(base + "/")
    ps, us = pat.strip("/").split("/"), path.strip("/").split("/")
    return len(ps) == len(us) and all(p == u or (p.startswith("{") and p.endswith("}")) for p, u in zip(ps, us))


class _Collect:
    """httptools callbacks gathering one response."""

    def __init__(self) -> None:
        self.headers: list = []
        self.body: list = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((bytes(name), bytes(value)))

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))

    def on_message_complete(self) -> None:
        self.done = True


async def fetch(up, target: bytes, lines: bytes, timeout: float = 10.0):
    """GET ``target`` from instance ``up`` (``first_instance``) on a new connection:
    ``(status, headers, body, wall time sent)`` or None on any failure."""
    host, port, base, host_hdr = up
    t0 = time.time()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(b"GET %s HTTP/1.1\r\nhost: %s\r\n%sconnection: close\r\n\r\n" % (base + target, host_hdr, lines))
        c = _Collect()
        p = httptools.HttpResponseParser(c)
        while not c.done:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                break
            p.feed_data(data)
        if not c.done:
            return None
        return p.get_status_code(), c.headers, b"".join(c.body), t0
    except (OSError, asyncio.TimeoutError, httptools.HttpParserError):
        return None
    finally:
        writer.close()
