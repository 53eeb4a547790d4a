"""Request id middleware: ``X-Request-ID`` accepted from trusted proxies, else generated.

The id is echoed in the response (``ctx.add_response_header``, so it costs no response
hook), sent upstream (``ctx.add_request_header``), and used in logs and problem bodies.
It runs before every other request filter: the engine calls ``request_filter`` ahead of
the chain (``Middleware.makes_request_ids``), and for the usual request (no incoming id,
the default header) takes the next generated id itself, ``take()`` written out: a
``pool.pop()``, or ``refill()`` when the pool is empty.  Keep ``pool``, ``refill`` and
``captured`` as they are.

Generated ids are a random per-worker prefix plus a counter in hex: unique across workers
and restarts without a syscall or a uuid per request.  They are made 256 at a time (one
block of the counter: the block number in hex, then the two hex digits of the id's place
in it, which is the counter's hex form from 256 on), each as its whole header line and
its str, by a few joins and splits in C rather than a ``%`` format and a decode per
request.  An incoming id from an untrusted peer is dropped (it could be used to forge
log correlation) and replaced.
"""

from __future__ import annotations

import os
import re

from fastgw.pipeline.middleware import Middleware

_VALID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}").fullmatch
# a block's last two hex digits, highest first: the pool is popped from its end
_LOW_B = [b"%02x" % i for i in range(255, -1, -1)]
_LOW_S = [s.decode("ascii") for s in _LOW_B]


class RequestId(Middleware):
    name = "request_id"

    def __init__(self, cfg, deps) -> None:
        super().__init__(cfg, deps)
        hdr = (cfg.gateway.request_id_header or "X-Request-ID").encode("ascii")
        self.lheader = hdr.lower()
        self.drop = frozenset({self.lheader})
        self.prefix = (os.urandom(6).hex() + "-").encode("ascii")
        # written lower-case like every header name the gateway itself writes (the
        # config's spelling only says which header; names are case-insensitive)
        self.header = self.lheader
        # the default header is a field of the Request (x_request_id): no header lookup
        self.captured = self.lheader == b"x-request-id"
        self.block = 0     # the counter's block the pool was made from (the first is 1)
        self.pool: list[tuple[bytes, str]] = []   # (header line, id), the next id last

    def refill(self) -> tuple[bytes, str]:
        """Make the next block's 256 ids (header line and str each) and take the first."""
        self.block += 1
        stem = self.prefix + b"%x" % self.block
        head = self.header + b": " + stem
        lines = (head + (b"\r\n" + head).join(_LOW_B) + b"\r\n").splitlines(True)
        s = stem.decode("ascii")
        ids = (s + ("\n" + s).join(_LOW_S)).split("\n")
        self.pool = pool = list(zip(lines, ids))
        return pool.pop()

    def take(self) -> tuple[bytes, str]:
        """The next generated id: (its header line, the id)."""
        try:
            return self.pool.pop()
        except IndexError:
            return self.refill()

    def request_filter(self, ctx):
        rid = ctx.request.x_request_id if self.captured else ctx.header(self.lheader)
        if rid is not None:
            if ctx.trusted_peer and _VALID(rid):
                ctx.request_id = rid.decode("ascii")
                ctx.add_response_header(self.header, rid)
                return None
            ctx.remove_request_headers(self.drop)
        line, ctx.request_id = self.take()
        # (``ctx.add_request_and_response_lines`` written out: a Python call less per request)
        ctx.up_lines += line
        ctx.resp_lines += line
        return None

    def makes_request_ids(self) -> bool:
        return True

    def error_filter(self, ctx) -> None:
        """A reply made before any request filter ran still carries a request id."""
        self.request_filter(ctx)

def build(root_cfg, service_cfg, route_cfg, deps):
    # shared by every route and kept across reloads (its counter keeps ids unique), per
    # header name so a reload that renames the header takes effect
    key = ("request_id", root_cfg.gateway.request_id_header)
    shared = deps.state.get(key) if deps is not None else None
    if shared is None:
        shared = RequestId(root_cfg, deps)
        if deps is not None:
            deps.state[key] = shared
    return shared
