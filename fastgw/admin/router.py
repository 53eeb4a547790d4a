"""A small router for the admin API: endpoints, bearer auth, JSON bodies, problem+json (L6).

An endpoint is one ``Endpoint(method, path, handler, write=..., doc=...)`` row in the table
``api.ENDPOINTS``; ``Router`` turns the table into a dict lookup on ``(method, path)``.
A handler takes an ``AdminRequest`` and returns ``(status, doc)`` (a dict or list, sent as
JSON), ``(status, bytes, content_type)``, or an awaitable of either; it raises ``Problem``
to answer an error.

Rules, in the order ``Router.dispatch`` applies them:

1. Authorization.  With ``monitoring.admin.token`` set, every call (reads included) needs
   ``Authorization: Bearer <token>``, compared with ``hmac.compare_digest``; else 401 with
   ``WWW-Authenticate: Bearer``.  Without a token, only loopback clients are answered (403
   for others) and writes are refused (403): a token is what makes the API able to act.
2. Unknown path: 404; known path, other method: 405 with ``Allow`` (both only after rule 1,
   so a caller without the token learns nothing but 401).
3. A write's body is JSON (``Content-Type: application/json``, or empty), at most
   ``monitoring.admin.max_body`` bytes (413 beyond, checked while reading); bad JSON: 400.
4. Errors are RFC 9457 ``application/problem+json`` like the data port's, with a
   ``request_id``; a handler that fails unexpectedly gives 500 and a log line.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from typing import Any, Awaitable, Callable, Union
from urllib.parse import unquote

import orjson

from fastgw.http.messages import problem

log = logging.getLogger("fastgw")

JSON_CT = b"application/json"
_NO_STORE = (b"cache-control", b"no-store")


class Problem(Exception):
    """An error answer: status, detail, optional extra members and headers."""

    def __init__(self, status: int, detail: str, *, extra: dict | None = None, headers: list | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra
        self.headers = headers


class AdminRequest:
    __slots__ = ("method", "path", "query", "headers", "body", "client", "request_id", "json", "params")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 client: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers          # lower-case names
        self.body = body
        self.client = client
        self.request_id = os.urandom(8).hex()
        self.json: Any = None           # the decoded body of a write (None when empty)
        self.params: dict[str, str] = {}  # ``{name}`` segments of a templated path, percent-decoded


Result = Union[tuple, Awaitable[tuple]]
Handler = Callable[[AdminRequest], Result]


class Endpoint:
    __slots__ = ("method", "path", "handler", "write", "doc")

    def __init__(self, method: str, path: str, handler: Handler, *, write: bool = False, doc: str = "") -> None:
        self.method = method
        self.path = path
        self.handler = handler
        self.write = write
        self.doc = doc


def is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return addr == ""           # a unix socket peer
    mapped = getattr(ip, "ipv4_mapped", None)   # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or ip).is_loopback


def problem_reply(status: int, detail: str, request_id: str, extra=None, headers=None) -> tuple[int, list, bytes]:
    r = problem(status, detail, request_id, extra=extra, headers=headers)
    return r.status, list(r.headers) + [_NO_STORE], r.body


def json_reply(status: int, doc: Any) -> tuple[int, list, bytes]:
    return status, [(b"content-type", JSON_CT), _NO_STORE], orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


class Router:
    """Dispatches admin requests over an endpoint table (see the module doc)."""

    def __init__(self, endpoints: list[Endpoint], token_getter: Callable[[], str | None]) -> None:
        self.endpoints = list(endpoints)
        self.by_key = {(e.method, e.path): e for e in self.endpoints}
        self.methods: dict[str, list[str]] = {}
        for e in self.endpoints:
            self.methods.setdefault(e.path, []).append(e.method)
        # paths with ``{name}`` segments (one segment each), tried after the exact paths
        self.templates = [(e, e.path.split("/")) for e in self.endpoints if "{" in e.path]
        self.token = token_getter

    def authorize(self, req: AdminRequest, write: bool) -> None:
        token = self.token()
        if token:
            got = req.headers.get("authorization", "")
            scheme, _, value = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                raise Problem(401, "this call needs Authorization: Bearer <monitoring.admin.token>",
                              headers=[(b"www-authenticate", b'Bearer realm="fastgw-admin"')])
            return
        if not is_loopback(req.client):
            raise Problem(403, "no monitoring.admin.token is set: the admin API answers loopback clients only")
        if write:
            raise Problem(403, "no monitoring.admin.token is set: the admin API is read-only until one is")

    def find(self, req: AdminRequest) -> Endpoint:
        method = req.method if req.method != "HEAD" else "GET"
        e = self.by_key.get((method, req.path))
        if e is not None:
            return e
        allowed = self.methods.get(req.path)
        if allowed is None and self.templates:
            e, allowed = self._template(req, method)
            if e is not None:
                return e
        if allowed is None:
            raise Problem(404, f"no admin endpoint {req.path} (GET /admin lists them)")
        raise Problem(405, f"{req.path} answers {', '.join(allowed)}",
                      headers=[(b"allow", ", ".join(allowed).encode())])

    def _template(self, req: AdminRequest, method: str):
        """(endpoint, None) of a templated path that matches, or (None, its methods)."""
        segs = req.path.split("/")
        allowed = None
        for e, tsegs in self.templates:
            if len(tsegs) != len(segs):
                continue
            params = {}
            for t, v in zip(tsegs, segs):
                if t.startswith("{") and t.endswith("}"):
                    if not v:
                        break
                    params[t[1:-1]] = unquote(v)
                elif t != v:
                    break
            else:
                if e.method == method:
                    req.params = params
                    return e, None
                allowed = (allowed or []) + [e.method]
        return None, allowed

    @staticmethod
    def decode_body(req: AdminRequest) -> None:
        if not req.body:
            return
        ct = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ct != "application/json":
            raise Problem(415, "a request body must be application/json")
        try:
            req.json = orjson.loads(req.body)
        except orjson.JSONDecodeError as e:
            raise Problem(400, f"invalid JSON body: {e}") from None

