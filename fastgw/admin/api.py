"""The admin API's endpoints, and the probe listener's (L6).

``ENDPOINTS`` is the table: adding an endpoint is one handler function here and one row
there (``write=True`` for anything that changes state: it then needs a token and is
audited with its body).  A path may hold ``{name}`` segments (one segment each; the
handler reads them percent-decoded in ``req.params``).  Handlers get the ``AdminApi`` (``api.control`` is the control
process: config, shared memory, the supervisor's channel) and the ``AdminRequest``.

==================  ======  =============================================================
``/admin``          GET     this table: method, path, write, doc
``/admin/config``   GET     the effective config as YAML, secrets ``"***"``
``/admin/routes``   GET     every route: service, name, path, methods, auth, roles, limit
``/admin/workers``  GET     per worker slot: pid, state, uptime, generation, requests
``/admin/upstreams``  GET   every service and instance: health, last check, ejection,
                            failures by kind, weight, source (docs/resilience.md)
``/admin/upstreams/  POST    ``{instance}`` = its ``url`` as ``/admin/upstreams`` shows it,
{service}/{instance}        percent-encoded, or its ``slot``: no new requests go to it (not
/drain``, ``/undrain``      even in panic mode), in-flight ones finish; ``undrain`` ends it.
                            Kept across reloads (shm, by identity), not across a restart;
                            404 unknown instance, 409 a service's only instance
``/admin/reload``   POST    reload as on HUP; 200 with the change summary (``result``:
                            reloaded / unchanged), or 422 problem+json with ``errors``
``/admin/cache/     POST    ``{"url": ...}``, ``{"prefix": ...}`` or ``{"tag": ...}``: drop
purge``                     matching response-cache entries in every worker (shm purge log;
                            applied before any worker's next lookup)
``/admin/sessions/  POST    revoke ``{"jti"}``, ``{"sid"}`` or ``{"sub", "before"}`` (optional
revoke``                    ``exp``: when the entry may go; default auth.revocation.retention)
``/admin/sessions/  GET     revocation table counts and the newest entries (``?limit=``)
revocations``
==================  ======  =============================================================

Audit: every ``/admin/*`` call is one ``admin_request`` record (client, method, path,
status); a write adds ``write: true`` and its decoded ``body``.  Probes and scrapes on the
other listener are not audited.
"""

from __future__ import annotations

import inspect
import time

from fastgw.admin.router import AdminRequest, Endpoint, Problem, Router, json_reply, problem_reply
from fastgw.config.redact import to_printable


# ---------------------------------------------------------------------- handlers
def get_index(api: "AdminApi", req: AdminRequest):
    return 200, {"endpoints": [{"method": e.method, "path": e.path, "write": e.write, "doc": e.doc}
                               for e in ENDPOINTS]}


def get_config(api: "AdminApi", req: AdminRequest):
    import yaml

    text = yaml.safe_dump(to_printable(api.control.config), sort_keys=False, allow_unicode=True)
    return 200, text.encode(), b"application/yaml; charset=utf-8"


def get_routes(api: "AdminApi", req: AdminRequest):
    cfg = api.control.config
    out = []
    for svc_name, svc in cfg.services.items():
        for r in svc.routes:
            rl = r.rate_limit
            out.append({"service": svc_name, "name": r.name, "path": r.path, "methods": list(r.methods),
                        "host": r.host, "auth": bool(r.auth), "roles": to_printable(r).get("roles"),
                        "rate_limit": None if rl is None else to_printable(rl)})
    return 200, {"generation": api.control.generation, "routes": out}


def get_workers(api: "AdminApi", req: AdminRequest):
    return 200, api.control.workers_doc()


def get_upstreams(api: "AdminApi", req: AdminRequest):
    return 200, api.control.upstreams_doc()


def _drain(api: "AdminApi", req: AdminRequest, on: bool):
    try:
        return 200, api.control.drain(req.params["service"], req.params["instance"], on)
    except LookupError as e:
        raise Problem(404, str(e)) from None
    except ValueError as e:
        raise Problem(409, str(e)) from None


def post_upstream_drain(api: "AdminApi", req: AdminRequest):
    return _drain(api, req, True)


def post_upstream_undrain(api: "AdminApi", req: AdminRequest):
    return _drain(api, req, False)


async def post_reload(api: "AdminApi", req: AdminRequest):
    res = await api.control.request_reload(req.client)
    if res.get("result") == "refused":
        n = len(res.get("errors", []))
        raise Problem(422, f"reload refused ({n} error{'' if n == 1 else 's'}): still running config "
                           f"generation {res.get('generation')}", extra={"errors": res.get("errors", [])})
    return 200, res


def post_cache_purge(api: "AdminApi", req: AdminRequest):
    body = req.json
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in ("url", "prefix", "tag"):
        raise Problem(400, 'expected exactly one of {"url": ...}, {"prefix": ...}, {"tag": ...}')
    kind, value = next(iter(body.items()))
    if not isinstance(value, str) or not value:
        raise Problem(400, f"{kind}: expected a non-empty string")
    if kind != "tag" and not (value.startswith("/") or value.startswith(("http://", "https://"))):
        raise Problem(400, f"{kind}: expected an absolute URL or a path starting with '/', got {value!r}")
    try:
        gen = api.control.region.purge.publish(kind, value)
    except ValueError as e:
        raise Problem(400, f"{kind}: {e}") from None
    return 200, {"purged": {kind: value}, "generation": gen}
def post_sessions_revoke(api: "AdminApi", req: AdminRequest):
    body = req.json
    if not isinstance(body, dict):
        raise Problem(400, 'body: a JSON object {"jti"}, {"sid"} or {"sub", "before"}')
    kinds = [k for k in ("jti", "sid", "sub") if k in body]
    if len(kinds) != 1 or not isinstance(body[kinds[0]], str) or not body[kinds[0]]:
        raise Problem(400, 'body: exactly one of "jti", "sid" or "sub", a non-empty string')
    kind = kinds[0]
    now = time.time()
    before = body.get("before", now if kind == "sub" else 0)
    exp = body.get("exp")
    for name, v in (("before", before), ("exp", exp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise Problem(400, f"{name}: unix seconds (a number)")
    if kind != "sub" and "before" in body:
        raise Problem(400, 'before: only with "sub"')
    cfg = api.control.config
    retention = float(cfg.auth.revocation.retention) if cfg is not None and cfg.auth is not None else 30 * 86400.0
    expiry = float(exp) if exp is not None else now + retention
    if not api.control.revoke(kind, body[kind], expiry, float(before or 0)):
        raise Problem(507, "the revocation table is full of live revocations (auth.revocation.max_entries)")
    return 200, {"revoked": {kind: body[kind], "before": before if kind == "sub" else None, "expiry": expiry}}


def get_sessions_revocations(api: "AdminApi", req: AdminRequest):
    table = api.control.region.revocation
    limit = 50
    for part in req.query.split("&"):
        k, _, v = part.partition("=")
        if k == "limit" and v.isdigit():
            limit = min(int(v), 1000)
    now = time.time()
    live = [e for e in table.scan() if e[2] > now] if table.slots else []
    live.sort(key=lambda e: e[4], reverse=True)
    from fastgw.shm.revocation import NAMES
    newest = [{"kind": NAMES[k], "key": key.decode(errors="replace"), "expiry": exp,
               "before": at if k == 3 else None, "created": created}
              for k, key, exp, at, created in live[:limit]]
    return 200, {**table.counts(), "live": len(live), "newest": newest}


ENDPOINTS = [
    Endpoint("GET", "/admin", get_index, doc="this list"),
    Endpoint("GET", "/admin/config", get_config, doc="effective config (YAML, secrets redacted)"),
    Endpoint("GET", "/admin/routes", get_routes, doc="routes with their service, methods, auth and limit"),
    Endpoint("GET", "/admin/workers", get_workers, doc="worker slots: pid, state, generation, requests"),
    Endpoint("GET", "/admin/upstreams", get_upstreams,
             doc="services and instances: health, last check, ejection, failures, weight, source"),
    Endpoint("POST", "/admin/upstreams/{service}/{instance}/drain", post_upstream_drain, write=True,
             doc="no new requests to the instance (its URL, percent-encoded, or its slot); in-flight ones finish"),
    Endpoint("POST", "/admin/upstreams/{service}/{instance}/undrain", post_upstream_undrain, write=True,
             doc="the drained instance takes new requests again"),
    Endpoint("POST", "/admin/reload", post_reload, write=True,
             doc="reload the config file (as HUP): the change summary, or the errors with their paths"),
    Endpoint("POST", "/admin/cache/purge", post_cache_purge, write=True,
             doc="drop response-cache entries by url, prefix or tag, in every worker"),
    Endpoint("POST", "/admin/sessions/revoke", post_sessions_revoke, write=True,
             doc='revoke {"jti"}, {"sid"} or {"sub", "before"} on every worker (and host, with Redis)'),
    Endpoint("GET", "/admin/sessions/revocations", get_sessions_revocations,
             doc="revocation table counts and the newest live entries"),
]


# ---------------------------------------------------------------------- the two apps
class AdminApi:
    """``app`` of the admin API listener."""

    def __init__(self, control, endpoints=None) -> None:
        self.control = control
        self.router = Router(endpoints or ENDPOINTS, self.token)

    def token(self) -> str | None:
        adm = self.control.config.monitoring.admin if self.control.config is not None else None
        return (adm.token or None) if adm is not None else None

    @property
    def max_body(self) -> int:
        adm = self.control.config.monitoring.admin if self.control.config is not None else None
        return int(adm.max_body) if adm is not None else 64 * 1024

    def handle(self, req: AdminRequest):
        endpoint = None
        try:
            try:
                endpoint = self.router.find(req)
            except Problem as missing:      # 404/405, but only to a caller that may ask
                self.router.authorize(req, False)
                raise missing
            self.router.authorize(req, endpoint.write)
            if endpoint.write:
                Router.decode_body(req)
            res = endpoint.handler(self, req)
        except Problem as p:
            return self._done(req, endpoint, self._problem(req, p))
        if inspect.isawaitable(res):
            return self._finish(req, endpoint, res)
        return self._done(req, endpoint, self._reply(res))

    def too_large(self, req: AdminRequest):
        """The body passed ``max_body`` (the protocol stopped reading it): 413, audited."""
        p = Problem(413, f"request body over {self.max_body} bytes (monitoring.admin.max_body)")
        return self._done(req, None, self._problem(req, p))

    async def _finish(self, req, endpoint, aw):
        try:
            res = self._reply(await aw)
        except Problem as p:
            res = self._problem(req, p)
        return self._done(req, endpoint, res)

    @staticmethod
    def _problem(req: AdminRequest, p: Problem):
        return problem_reply(p.status, p.detail, req.request_id, extra=p.extra, headers=p.headers)

    @staticmethod
    def _reply(res: tuple):
        if len(res) == 3:
            status, body, ct = res
            return status, [(b"content-type", ct), (b"cache-control", b"no-store")], body
        return json_reply(*res)

    def _done(self, req: AdminRequest, endpoint, res: tuple) -> tuple:
        rec = {"ts": round(time.time(), 6), "event": "admin_request", "client_ip": req.client,
               "method": req.method, "path": req.path, "status": res[0]}
        if endpoint is not None and endpoint.write:
            rec["write"] = True
            rec["body"] = req.json
        self.control.audit_record(rec)
        return res


class ProbeApp:
    """``app`` of the probe/metrics listener: ``/livez``, ``/readyz``, ``/metrics``."""

    max_body = 64 * 1024    # bodies are read and dropped: these paths take none

    def __init__(self, control) -> None:
        self.control = control

    def handle(self, req: AdminRequest):
        if req.method not in ("GET", "HEAD"):
            return problem_reply(405, "this listener answers GET and HEAD", req.request_id,
                                 headers=[(b"allow", b"GET, HEAD")])
        if req.path.startswith("/admin"):
            where = "monitoring.admin" if self.control.api_sock is not None else "monitoring.admin (not set)"
            return problem_reply(404, f"the admin API has its own listener: {where}", req.request_id)
        return self.control.respond(req.method, req.path)

    def too_large(self, req: AdminRequest):
        return problem_reply(413, f"request body over {self.max_body} bytes", req.request_id)
