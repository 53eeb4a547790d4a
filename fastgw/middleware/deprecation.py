"""Deprecated and removed API versions: Deprecation, Sunset and Link headers, 410 after sunset (L6).

What it owns, on a route with ``deprecation:`` (schema and rules in
``fastgw.config.versioning``):

1. every response (upstream answers and local replies alike) gets, from the
   ``deprecated`` instant on, ``Deprecation: @<unix seconds>`` (RFC 9745) and, with
   ``link``, ``Link: <link>; rel="deprecation"``; ``Sunset: <IMF-fixdate>`` (RFC 8594)
   and ``Link: <successor>; rel="successor-version"`` (RFC 5829) are sent whenever set,
   before the deprecation date too, since announcing them early is their point.  The
   links go in one ``Link`` field (a comma-separated list);
2. past ``sunset`` with ``gone_after_sunset``: 410 Gone problem+json naming the
   successor (``successor`` member and the Link header), without reaching the upstream;
3. counts requests to a deprecated version in ``fastgw_deprecated_requests_total``
   {route, version, outcome=served|gone, client=authenticated|anonymous|unknown}, in its
   ``logging`` hook (so after auth: ``authenticated`` when a token was verified;
   ``unknown`` for the 410, answered before auth), so the platform team sees who still
   has to migrate.

The header blocks are prebuilt bytes (STYLE.md item 6); per request it reads the wall
clock once (``time.time``, a C call) and compares two floats.  It sits after CORS in the
registry, so a 410 still carries CORS headers and is answered before auth and limits
(a removed version is gone for everyone).
"""

from __future__ import annotations

from email.utils import formatdate

from fastgw.clock import wall
from fastgw.config.versioning import DeprecationConfig
from fastgw.pipeline.middleware import Middleware

M_DEPRECATED = "fastgw_deprecated_requests_total"  # {route, version, outcome, client} (obs.metrics.METRICS)


def http_date(t: float) -> str:
    """IMF-fixdate of Unix seconds ``t`` (``Wed, 01 Jul 2027 00:00:00 GMT``)."""
    return formatdate(int(t), usegmt=True)


class Deprecation(Middleware):
    name = "deprecation"

    def __init__(self, cfg: DeprecationConfig, deps, route: str = "-", version: str | None = None) -> None:
        super().__init__(cfg, deps)
        self.deprecated_at = float(cfg.deprecated)
        self.gone_at = float(cfg.sunset) if cfg.gone_after_sunset and cfg.sunset is not None else float("inf")
        always: list[tuple[bytes, bytes]] = []
        if cfg.sunset is not None:
            always.append((b"sunset", http_date(cfg.sunset).encode("ascii")))
        succ = f'<{cfg.successor}>; rel="successor-version"' if cfg.successor else None
        links = [f'<{cfg.link}>; rel="deprecation"'] if cfg.link else []
        if succ:
            links.append(succ)
        before = list(always)
        if succ:
            before.append((b"link", succ.encode("ascii")))
        after = [(b"deprecation", b"@%d" % int(cfg.deprecated)), *always]
        if links:
            after.append((b"link", ", ".join(links).encode("ascii")))
        self._before = tuple(before)
        self._after = tuple(after)
        self.successor = cfg.successor
        self.version = version
        self._sunset_text = http_date(cfg.sunset) if cfg.sunset is not None else ""
        what = f"version {version} of this API" if version else "this API"
        self._gone_detail = f"{what} was removed on {self._sunset_text}" + (
            f"; use {cfg.successor}" if cfg.successor else "")
        self._metrics = getattr(deps, "metrics", None)
        base = (("route", route), ("version", version or "-"))
        self._l_user = base + (("outcome", "served"), ("client", "authenticated"))
        self._l_anon = base + (("outcome", "served"), ("client", "anonymous"))
        self._l_gone = base + (("outcome", "gone"), ("client", "unknown"))

    def request_filter(self, ctx):
        """None (continue), or past the sunset with gone_after_sunset the 410 reply."""
        if wall() < self.gone_at:
            return None
        extra = {"successor": self.successor} if self.successor else None
        return ctx.problem(410, self._gone_detail, title="Gone", kind="gone", extra=extra)

    def logging(self, ctx, error) -> None:
        """Count a request to the deprecated version (after auth ran: the client class is known)."""
        m = self._metrics
        if m is None:
            return
        now = wall()
        if now < self.deprecated_at:
            return
        if now >= self.gone_at:
            m.inc(M_DEPRECATED, self._l_gone)
        else:
            m.inc(M_DEPRECATED, self._l_user if ctx.user else self._l_anon)

    def response_filter(self, ctx, head) -> None:
        """Add the Deprecation/Sunset/Link headers (module doc, rule 1)."""
        head.extend(self._after if wall() >= self.deprecated_at else self._before)


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's deprecation middleware, or None when the route has no ``deprecation``."""
    cfg = route_cfg.deprecation if route_cfg is not None else None
    if cfg is None:
        return None
    return Deprecation(cfg, deps, route_cfg.name or "-", route_cfg.served_version())
