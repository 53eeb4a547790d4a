"""Chain compiler (L4): a route's middlewares turned into tuples of the hooks they use.

Built once per config and route (STYLE.md item 10).  ``request`` holds
``(index, bound_method, is_async)`` in chain order; ``response`` holds
``(index, bound_method)`` in reverse order, so a local reply made by the middleware at
index i runs only the response filters of middlewares 0..i; ``response_body`` is in
reverse order too.  Hooks a middleware does not
override are absent, so they cost nothing per request.
"""

from __future__ import annotations

import inspect

from fastgw.http.wire import STATUS_LINES
from fastgw.pipeline.middleware import overrides

# the status lines of ``Proxy.upstream_head``'s usual response (a 101 starts a tunnel: never usual)
_PLAIN_LINES = {s: line for s, line in STATUS_LINES.items() if s != 101}


class Chain:
    __slots__ = ("mws", "ids", "request", "upstream_request", "response", "response_body", "logging",
                 "request_body", "error", "request_sync", "direct", "response_block",
                 "usual_block", "usual_lines", "usual_memo", "log_notes")

    def __init__(self, mws) -> None:
        mws = tuple(mws)
        self.mws = mws
        # the middleware that gives each request its id (``Middleware.makes_request_ids``):
        # the engine runs it before the request hooks, so it is not one of them
        self.ids = next((m for m in mws if m.makes_request_ids()), None)
        self.request = tuple(
            (i, m.request_filter, inspect.iscoroutinefunction(m.request_filter))
            for i, m in enumerate(mws) if overrides(m, "request_filter") and m is not self.ids)
        # the usual chain: no async request hook -> ``(index, hook)`` pairs run in a plain
        # loop (``request_sync``), else None and the engine drives ``request``
        self.request_sync = None if any(a for _i, _f, a in self.request) else \
            tuple((i, f) for i, f, _a in self.request)
        self.upstream_request = tuple(m.upstream_request_filter for m in mws
                                      if overrides(m, "upstream_request_filter"))
        self.response = tuple((i, m.response_filter) for i, m in reversed(list(enumerate(mws)))
                              if overrides(m, "response_filter"))
        # the same filters' raw-block form for an upstream head, in the same order, when
        # every one has it (``Middleware.response_block_filter``): the head builder then
        # makes no ResponseHead; else None
        resp = [m for m in reversed(mws) if overrides(m, "response_filter")]
        self.response_block = tuple(m.response_block_filter for m in resp) \
            if resp and all(overrides(m, "response_block_filter") for m in resp) else None
        # ``Proxy.upstream_head``'s usual response: the raw-block filters it runs on the
        # upstream's cut block and the statuses it may have (their status lines): none
        # when a response filter needs a ResponseHead; a filter limited to some statuses
        # (``Middleware.response_block_statuses``) is left out, and so are its statuses
        # (``usual_memo``: its one filter's edit is remembered in ``ctx.usual_edit``, chosen
        # by a request filter of this chain, ``Middleware.response_block_memo``)
        self.usual_memo = False
        if not resp:
            self.usual_block, self.usual_lines = (), _PLAIN_LINES
        elif self.response_block is None:
            self.usual_block, self.usual_lines = (), {}
        else:
            limited = [m.response_block_statuses() for m in resp]
            usual = [m for m, only in zip(resp, limited) if only is None]
            self.usual_block = tuple(m.response_block_filter for m in usual)
            skip = frozenset().union(*(only for only in limited if only is not None))
            self.usual_lines = {s: line for s, line in _PLAIN_LINES.items() if s not in skip}
            chooser = usual[0].response_block_memo() if len(usual) == 1 else None
            self.usual_memo = chooser is not None and any(
                m.name == chooser and overrides(m, "request_filter") for m in mws)
        # body filters run in the response filters' order (reverse chain order), so a
        # middleware's body filter sees the bytes that match the head its response filter
        # saw: transform edits the upstream's body before compression encodes it, and the
        # cache stores what compression produced
        self.response_body = tuple(m.response_body_filter for m in reversed(mws)
                                   if overrides(m, "response_body_filter"))
        self.logging = tuple(m.logging for m in mws if overrides(m, "logging"))
        # some middleware leaves a note the access log records (``Middleware.leaves_log_notes``)
        self.log_notes = any(m.leaves_log_notes() for m in mws)
        # ``(index, hook)`` on the whole request body, of the middlewares that need it
        self.request_body = tuple((i, m.request_body_filter) for i, m in enumerate(mws)
                                  if m.needs_body() and overrides(m, "request_body_filter"))
        # before a reply made when no request filter ran (only the global chain's matter)
        self.error = tuple(m.error_filter for m in mws if overrides(m, "error_filter"))
        # after the request hooks the request goes straight to proxy() (no body check)
        self.direct = not self.request_body

    def close(self) -> None:
        for m in self.mws:
            try:
                m.close()
            except Exception:
                pass

    def response_body_filter(self):
        """One callable applying every response body filter in order, or None."""
        fs = self.response_body
        if not fs:
            return None
        if len(fs) == 1:
            return fs[0]

        def run(ctx, chunk, end, fs=fs):
            for f in fs:
                chunk = f(ctx, chunk, end)
            return chunk
        return run
