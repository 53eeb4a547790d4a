"""A small, bounded, non-blocking HTTP/1.1 GET for the gateway's own fetches (JWKS).

Stand-in until the gateway's upstream client can serve its own fetches (``deps.client``);
it is deliberately minimal and safe rather than general:

- runs on the current event loop with asyncio streams (DNS through the loop's resolver,
  never a blocking call on the loop);
- ``https`` with certificate and host name verification (``ssl.create_default_context``,
  optionally extra trust anchors from ``ca_file``); ``http`` only when the caller allows it;
- one deadline for the whole exchange (connect, TLS, head, body);
- bounded: 32 KiB of response head, ``max_size`` of body (Content-Length, chunked or
  read-to-close), so a hostile or broken server cannot grow memory;
- no redirects, no proxies, no compression (``Accept-Encoding: identity``), ``Connection:
  close``: one request per connection, since fetches are minutes apart.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_HEAD = 32 * 1024


class FetchError(Exception):
    """The fetch failed; the message says how (no secrets, no bodies)."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case name -> value (last one wins)
        self.body = body


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies certificates and host names (TLS 1.2+)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def get(url: str, *, timeout: float, max_size: int, ssl_ctx: ssl.SSLContext | None = None,
              headers: dict[str, str] | None = None, allow_http: bool = False) -> Response:
    """GET ``url``; raises ``FetchError`` on any failure, including a timeout."""
    u = urlsplit(url)
    if u.scheme == "https":
        ctx = ssl_ctx or tls_context()
        port = u.port or 443
    elif u.scheme == "http" and allow_http:
        ctx = None
        port = u.port or 80
    else:
        raise FetchError(f"scheme {u.scheme!r} not allowed")
    host = u.hostname
    if not host:
        raise FetchError("no host in url")
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    hosthdr = u.netloc.rsplit("@", 1)[-1]
    lines = [f"GET {target} HTTP/1.1", f"Host: {hosthdr}", "Accept: application/json",
             "Accept-Encoding: identity", "Connection: close", "User-Agent: fastgw"]
    for k, v in (headers or {}).items():
        if "\r" in k + v or "\n" in k + v:
            raise FetchError("bad request header")
        lines.append(f"{k}: {v}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(host, port, ctx, request, max_size)
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g}s") from None
    except FetchError:
        raise
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
            UnicodeDecodeError, ssl.SSLError) as e:
        raise FetchError(f"{type(e).__name__}: {e}") from None


async def _exchange(host, port, ctx, request: bytes, max_size: int) -> Response:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname=host if ctx else None, limit=MAX_HEAD)
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise FetchError("response head too large") from None
        status, hdrs = _parse_head(head)
        if status in (204, 304) or 100 <= status < 200:
            return Response(status, hdrs, b"")
        te = hdrs.get("transfer-encoding", "").lower()
        if te:
            if te != "chunked":
                raise FetchError(f"unsupported transfer-encoding {te!r}")
            body = await _read_chunked(reader, max_size)
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if n < 0 or n > max_size:
                raise FetchError(f"body of {n} bytes exceeds {max_size}")
            body = await reader.readexactly(n)
        else:
            body = await reader.read(max_size + 1)
            while len(body) <= max_size:
                more = await reader.read(max_size + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > max_size:
                raise FetchError(f"body exceeds {max_size} bytes")
        return Response(status, hdrs, body)
    finally:
        writer.close()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise FetchError("bad status line")
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise FetchError("bad header line")
        hdrs[name.lower()] = value.strip()
    return int(parts[1]), hdrs


async def _read_chunked(reader: asyncio.StreamReader, max_size: int) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size_s = line.split(b";", 1)[0].strip()
        if not size_s or len(size_s) > 8:
            raise FetchError("bad chunk size")
        n = int(size_s, 16)
        if n == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + n > max_size:
            raise FetchError(f"body exceeds {max_size} bytes")
        body += await reader.readexactly(n)
        if await reader.readexactly(2) != b"\r\n":
            raise FetchError("bad chunk framing")
