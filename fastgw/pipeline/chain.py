"""Chain compiler (L4): a route's middlewares turned into tuples of the hooks they use.

Built once per config and route (STYLE.md item 10).  ``request`` holds
``(index, bound_method, is_async)`` in chain order; ``response`` holds
``(index, bound_method)`` in reverse order, so a local reply made by the middleware at
index i runs only the response filters of middlewares 0..i.  Hooks a middleware does not
override are absent, so they cost nothing per request.
"""

from __future__ import annotations

import inspect

from fastgw.pipeline.middleware import overrides


class Chain:
    __slots__ = ("mws", "request", "upstream_request", "response", "body", "logging",
                 "body_check", "names", "request_sync", "direct")

    def __init__(self, mws) -> None:
        mws = tuple(mws)
        self.mws = mws
        self.names = tuple(m.name for m in mws)
        self.request = tuple(
            (i, m.request_filter, inspect.iscoroutinefunction(m.request_filter))
            for i, m in enumerate(mws) if overrides(m, "request_filter"))
        # the usual chain: no async request hook -> ``(index, hook)`` pairs run in a plain
        # loop (``request_sync``), else None and the engine drives ``request``
        self.request_sync = None if any(a for _i, _f, a in self.request) else \
            tuple((i, f) for i, f, _a in self.request)
        self.upstream_request = tuple(m.upstream_request_filter for m in mws
                                      if overrides(m, "upstream_request_filter"))
        self.response = tuple((i, m.response_filter) for i, m in reversed(list(enumerate(mws)))
                              if overrides(m, "response_filter"))
        self.body = tuple(m.response_body_filter for m in mws if overrides(m, "response_body_filter"))
        self.logging = tuple(m.logging for m in mws if overrides(m, "logging"))
        # optional hook: body_filter(ctx, body) -> Reply | None on the whole request body
        self.body_check = tuple((i, m.body_filter) for i, m in enumerate(mws)
                                if getattr(m, "needs_body", False) and hasattr(m, "body_filter"))
        # after the request hooks the request goes straight to proxy() (no body check)
        self.direct = not self.body_check

    def close(self) -> None:
        for m in self.mws:
            try:
                m.close()
            except Exception:
                pass

    def body_filter(self):
        """One callable applying every response body filter in order, or None."""
        fs = self.body
        if not fs:
            return None
        if len(fs) == 1:
            return fs[0]

        def run(ctx, chunk, end, fs=fs):
            for f in fs:
                chunk = f(ctx, chunk, end)
            return chunk
        return run
