"""Request id middleware: ``X-Request-ID`` accepted from trusted proxies, else generated.

The id is echoed in the response (``ctx.add_response_header``, so it costs no response
hook), sent upstream (``ctx.add_request_header``), and used in logs and problem bodies.
It runs before every other request filter: the engine calls ``request_filter`` ahead of
the chain (``Middleware.makes_request_ids``), and makes the usual id (no incoming id,
the default header) itself from ``gen_line``, ``counter`` and ``id_start``, without a
Python call; keep those three and ``captured`` as they are.  Generated ids are a random
per-worker prefix plus a counter: unique across workers and restarts without a syscall
or a uuid per request.  An incoming id from an untrusted peer is dropped (it could be
used to forge log correlation) and replaced.
"""

from __future__ import annotations

import os
import re

from fastgw.pipeline.middleware import Middleware

_VALID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}").fullmatch


class RequestId(Middleware):
    name = "request_id"

    def __init__(self, cfg, deps) -> None:
        super().__init__(cfg, deps)
        hdr = (cfg.gateway.request_id_header or "X-Request-ID").encode("ascii")
        self.header = hdr
        self.lheader = hdr.lower()
        self.drop = frozenset({self.lheader})
        self.prefix = (os.urandom(6).hex() + "-").encode("ascii")
        self.counter = 0
        # written lower-case like every header name the gateway itself writes (the
        # config's spelling only says which header; names are case-insensitive)
        self.header = self.lheader
        self.gen = self.prefix + b"%x"
        # a generated id as its whole header line, one ``%`` per request: the id is the
        # slice [start:-2] of it (a line ``name: prefix-hex\r\n``)
        self.gen_line = self.header + b": " + self.prefix + b"%x\r\n"
        self.id_start = len(self.header) + 2
        # the default header is a field of the Request (x_request_id): no header lookup
        self.captured = self.lheader == b"x-request-id"

    def request_filter(self, ctx):
        rid = ctx.request.x_request_id if self.captured else ctx.header(self.lheader)
        if rid is not None:
            if ctx.trusted_peer and _VALID(rid):
                ctx.request_id = rid.decode("ascii")
                ctx.add_response_header(self.header, rid)
                return None
            ctx.remove_request_headers(self.drop)
        n = self.counter = self.counter + 1
        line = self.gen_line % n
        ctx.request_id = line[self.id_start:-2].decode("ascii")
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
