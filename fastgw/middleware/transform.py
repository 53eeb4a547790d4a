"""Transformations (issue 25): path and query rewriting, header operations with
variables, JSON body edits.  Config: ``config.transform`` (gateway, service and route
level); docs/transform.md.

What it owns, per route, compiled once when the config is built (``build``):

- **merge**: the route's ``transform`` over its service's over the gateway's.  Header
  operations merge per header name (the most specific level that names a header decides
  everything done to it); query keys merge per key; the path rewrite (``strip_prefix`` or
  ``path``) and each side's ``body`` block come whole from the most specific level that
  sets them.  A route where nothing is left gets no middleware at all: it pays nothing.
- **headers**: constant values are serialised once (``name: value\\r\\n`` bytes); a value
  with variables is a tuple of bytes and getters.  Every header a ``set`` or ``rename``
  writes is removed first, so the client's own copy never passes in its place; a variable
  that is absent or holds a control character removes the header instead of writing it
  (``fastgw_transform_headers_dropped_total``).  Identity headers, hop-by-hop and framing
  names were refused at load (``config.transform``, ``config.semantics`` rule 7).
  Response header values with per-request variables (all but ``$upstream_addr``) are
  decorations: the request filter writes them to ``ctx.resp_lines``, so they are on
  whatever answers after it (a local reply, a future cache hit) and never part of the
  upstream head a cache would store; constants, removals, renames and ``$upstream_addr``
  edit the upstream's head in the response filter, before compression.
- **path**: the rewritten ``path?query`` goes to ``ctx.up_target``, which every attempt's
  head reads (``pipeline.heads.request_head``; the instance's base path is still put in
  front).  (An ``upstream_request_filter`` instead was measured: it spares other routes
  one slot store and one test, about 200 instructions, and costs every rewriting route
  about 7,500: a ``RequestHead`` per attempt.)  The new path is checked and normalised
  again (``http.normalize``): a dot
  segment (``.``/``..``, ``%2e`` included) or an invalid path is refused with a 500
  problem+json and a log line, and nothing is forwarded.  Regexes are RE2
  (``google-re2``): linear time, no backtracking, so a route's regex cannot be made slow
  by a crafted path.
- **JSON bodies**: ``set``/``remove``/``rename`` by JSON Pointer (RFC 6901), and on the
  response ``unwrap``/``wrap``, for bodies up to ``max_size`` whose Content-Type is JSON and
  that carry no Content-Encoding.  Anything else passes through untouched and is counted
  (``fastgw_transform_skipped_total{direction,reason}``): never a 413.  A request body is
  forwarded with its new Content-Length (the engine frames a rewritten body with its
  length); on a response, the head waits for the edited body and carries its new
  Content-Length (``pipeline.heads.WHOLE_BODY_NOTE``); only a body that outgrows
  ``max_size`` without a Content-Length streams, chunked.

Order (middleware/registry): ``transform`` comes after ``compression`` in ``ORDER``.
Its request filter then runs after auth (``$jwt.*`` is known) and validation; its
response filter runs before compression's (response filters run in reverse), and so does
its body filter (``pipeline.chain`` runs body filters in the response order): the
upstream's JSON is edited first, then compressed, as DESIGN.md's "constant transforms ->
compression" asks.  A local reply (401, 429) passes only through the response filters of
the middlewares that ran before it, so a gateway-level response header is not on a 401
sent by auth.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastgw.errors import GatewayError
from fastgw.http.jsonbody import BodyPlan
from fastgw.http.messages import ResponseHead
from fastgw.http.normalize import normalize_path
from fastgw.pipeline.heads import WHOLE_BODY_NOTE
from fastgw.pipeline.middleware import Middleware
from fastgw.pipeline.templates import GETTERS as _GETTERS, compile_template, render

NOTE = "transform"
_M_SKIP = "fastgw_transform_skipped_total"
_M_DROP = "fastgw_transform_headers_dropped_total"
_M_PATH = "fastgw_transform_path_refused_total"
_DOT_SEG = re.compile(r"(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)").search
_NO_BODY = frozenset((204, 304))


# ---------------------------------------------------------------- headers
class HeaderPlan:
    """One side's header operations, compiled (see the module doc)."""

    __slots__ = ("drop", "renames", "lines", "pairs", "dynamic", "late", "any")

    def __init__(self, ops: dict, consts: dict, late_ok: bool = False) -> None:
        drop: set[bytes] = set()
        renames = []
        lines = b""
        pairs = []
        dynamic = []
        late = []
        for lname, items in ops.items():
            for op, name, arg in items:
                if op == "remove":
                    drop.add(lname.encode())
                elif op == "rename":
                    drop.add(lname.encode())
                    drop.add(arg.lower().encode())
                    renames.append((lname.encode(), arg.encode()))
                else:
                    if op == "set":
                        drop.add(lname.encode())
                    parts = compile_template(arg, consts)
                    if len(parts) == 1 and parts[0].__class__ is bytes:
                        lines += name.encode() + b": " + parts[0] + b"\r\n"
                        pairs.append((name.encode(), parts[0]))
                    elif late_ok and _GETTERS["upstream_addr"] not in parts:
                        # a per-request response value: a decoration (ctx.resp_lines)
                        # written by the request filter, so it is on whatever answers
                        # (a local reply after this filter, a future cache hit) and
                        # not part of what a cache would store
                        drop.discard(lname.encode())
                        late.append((name.encode(), frozenset((lname.encode(),)), parts, op == "set"))
                    else:
                        dynamic.append((name.encode(), frozenset((lname.encode(),)), parts))
        self.drop = frozenset(drop)
        self.renames = tuple(renames)
        self.lines = lines
        self.pairs = tuple(pairs)
        self.dynamic = tuple(dynamic)
        self.late = tuple(late)
        # anything for the head filter to do
        self.any = bool(self.drop or self.lines or self.dynamic)


def _merge_headers(levels: list) -> dict:
    """lower-case name -> [(op, name, arg)] of the most specific level naming it."""
    out: dict = {}
    for h in levels:
        if h is None:
            continue
        mine: dict = {}
        for k, val in h.set.items():
            mine.setdefault(k.lower(), []).append(("set", k, val))
        for k, val in h.add.items():
            mine.setdefault(k.lower(), []).append(("add", k, val))
        for k in h.remove:
            mine.setdefault(k.lower(), []).append(("remove", k, None))
        for k, target in h.rename.items():
            mine.setdefault(k.lower(), []).append(("rename", k, target))
        out.update(mine)
    return out


def _json_type(ct: bytes | None) -> bool:
    if ct is None:
        return False
    e = ct.partition(b";")[0].strip().lower()
    return e == b"application/json" or e.endswith(b"+json")


class _BodyState:
    __slots__ = ("buf", "size", "passing")

    def __init__(self) -> None:
        self.buf: list = []
        self.size = 0
        self.passing = False


# ---------------------------------------------------------------- the hooks
# Module functions taking ``self``, shared by the three classes below.
def _init(self, plan: dict, deps) -> None:
    Middleware.__init__(self, plan, deps)
    m = getattr(deps, "metrics", None)
    self._inc = m.inc if m is not None else None
    self.log = getattr(deps, "log", None)
    self.route = plan["route"]
    self.path_fn = plan["path"]
    self.q_drop = plan["q_drop"]
    self.q_add = plan["q_add"]    # constant "k=v" pieces
    self.q_vars = plan["q_vars"]  # (b"k=", template parts) of values with variables
    self.req_h: HeaderPlan = plan["req_headers"]
    self.resp_h: HeaderPlan = plan["resp_headers"]
    self.req_body: BodyPlan | None = plan["req_body"]
    self.resp_body: BodyPlan | None = plan["resp_body"]
    self._route_labels = (("route", self.route),)


def _count(self, metric: str, labels: tuple) -> None:
    if self._inc is not None:
        self._inc(metric, labels)


def _request_filter(self, ctx):
    h = self.req_h
    if h.any:
        lines = h.lines
        if h.renames:
            for n, val in ctx.fwd:
                ln = n.lower()
                for src, dst in h.renames:
                    if ln == src:
                        lines += dst + b": " + val + b"\r\n"
        if h.drop:
            ctx.remove_request_headers(h.drop)
        for name, lname, parts in h.dynamic:
            val = render(ctx, parts)
            if val is None:
                ctx.remove_request_headers(lname)
                _count(self, _M_DROP, (("direction", "request"),))
            else:
                lines += name + b": " + val + b"\r\n"
        if lines:
            ctx.add_request_lines(lines)
    if self.resp_h.late:
        _decorate(self, ctx)
    if self.path_fn is not None or self.q_drop is not None:
        return _rewrite(self, ctx)
    return None


def _decorate(self, ctx) -> None:
    """The response headers whose values are per request (variables other than
    ``$upstream_addr``), as ``ctx`` response decorations."""
    for name, lname, parts, is_set in self.resp_h.late:
        val = render(ctx, parts)
        if val is None:
            ctx.remove_response_headers(lname)
            _count(self, _M_DROP, (("direction", "response"),))
            continue
        if is_set:
            ctx.remove_response_headers(lname)
        ctx.resp_lines += name + b": " + val + b"\r\n"


def _rewrite(self, ctx):
    req = ctx.request
    path = req.path
    if self.path_fn is not None:
        new = self.path_fn(ctx, path)
        if new != path:
            if _DOT_SEG(new) is not None:
                return _refuse(self, ctx, path, new, "a dot segment ('.' or '..')")
            try:
                new, _slash = normalize_path(new.encode())
            except (GatewayError, UnicodeEncodeError) as e:
                return _refuse(self, ctx, path, new, getattr(e, "detail", None) or str(e))
        path = new
    query = req.query
    if self.q_drop is not None:
        kept = [p for p in query.split(b"&") if p and p.partition(b"=")[0] not in self.q_drop] \
            if query else []
        kept.extend(self.q_add)
        for key, parts in self.q_vars:
            val = render(ctx, parts)
            if val is not None:  # (absent or a control character: the key is left out)
                kept.append(key + quote(val, safe="").encode())
        query = b"&".join(kept)
    target = path.encode()
    if query:
        target += b"?" + query
    ctx.up_target = target
    return None


def _refuse(self, ctx, old: str, new: str, why: str):
    _count(self, _M_PATH, self._route_labels)
    if self.log is not None:
        self.log.error("transform: route %s rewrote %r to %r: refused (%s), not forwarded",
                       self.route, old, new[:200], why)
    return ctx.problem(500, "The route's path rewrite produced an invalid path", kind="internal")


def _response_filter(self, ctx, head) -> None:
    h = self.resp_h
    if h.any:
        add = list(h.pairs)
        if h.renames:
            for n, val in head.headers:
                ln = n.lower()
                for src, dst in h.renames:
                    if ln == src:
                        add.append((dst, val))
        if h.drop:
            hs = head.headers
            hs[:] = [p for p in hs if p[0].lower() not in h.drop]
            if ctx.resp_lines:
                ctx.remove_response_headers(h.drop)
        for name, lname, parts in h.dynamic:
            val = render(ctx, parts)
            if val is None:
                head.remove(next(iter(lname)))
                _count(self, _M_DROP, (("direction", "response"),))
            else:
                add.append((name, val))
        if add:
            head.extend(add)
    if self.resp_body is not None and head.__class__ is ResponseHead:
        _body_decide(self, ctx, head)


def _body_decide(self, ctx, head) -> None:
    if ctx.request.method == "HEAD" or head.status in _NO_BODY or head.status < 200:
        return
    reason = None
    if not _json_type(head.get(b"content-type")):
        reason = "not_json"
    elif head.get(b"content-encoding", b"identity").strip().lower() != b"identity":
        reason = "compressed"
    else:
        cl = head.get(b"content-length")
        if cl is not None and cl.strip().isdigit() and int(cl) > self.resp_body.max_size:
            reason = "too_large"
    if reason is not None:
        _count(self, _M_SKIP, (("direction", "response"), ("reason", reason)))
        return
    head.drop_length()
    ctx.notes[NOTE] = _BodyState()
    ctx.notes[WHOLE_BODY_NOTE] = True  # the edited body goes out whole, with its length


def _needs_body(self) -> bool:
    return self.req_body is not None


def _request_body_filter(self, ctx, body: bytes):
    plan = self.req_body
    if plan is None or not body:
        return None
    reason = None
    if not _json_type(ctx.header(b"content-type")):
        reason = "not_json"
    elif ctx.header(b"content-encoding", b"identity").strip().lower() != b"identity":
        reason = "compressed"
    elif len(body) > plan.max_size:
        reason = "too_large"
    else:
        out = plan.apply(body)
        if out is not None:
            return out
        reason = "not_json"
    _count(self, _M_SKIP, (("direction", "request"), ("reason", reason)))
    return None


def _response_body_filter(self, ctx, chunk: bytes, end: bool) -> bytes:
    notes = ctx.notes
    st = notes.get(NOTE) if notes else None
    if st is None or st.passing:
        return chunk
    if chunk:
        st.buf.append(chunk)
        st.size += len(chunk)
        if st.size > self.resp_body.max_size:
            # grew past max_size without a Content-Length: the rest streams untouched
            st.passing = True
            _count(self, _M_SKIP, (("direction", "response"), ("reason", "too_large")))
            out = b"".join(st.buf)
            st.buf = None
            return out
    if not end:
        return b""
    body = b"".join(st.buf)
    st.passing = True
    out = self.resp_body.apply(body)
    if out is None:
        _count(self, _M_SKIP, (("direction", "response"), ("reason", "not_json")))
        return body
    return out


# ---------------------------------------------------------------- the middleware
# A route's transform is two middlewares at two places of the gateway's order
# (middleware/registry.py): the request side (path, query, request headers, per-request
# response decorations, the request body) runs before the cache lookup, so a Vary on a
# header a transform sets separates users; the response side (response headers that do
# not depend on the request, the response body) comes after compression in the order, so
# its hooks run before compression's and before the cache stores.  Each is a direct
# Middleware subclass whose hooks are the functions above: only the hooks a route needs
# are in its chain (STYLE.md item 10).
class TransformRequest(Middleware):
    """Path, query, request headers and per-request response decorations."""

    name = "transform"
    __init__ = _init
    request_filter = _request_filter


class TransformRequestBody(Middleware):
    """``TransformRequest`` plus the JSON request body."""

    name = "transform"
    __init__ = _init
    request_filter = _request_filter
    needs_body = _needs_body
    request_body_filter = _request_body_filter


class TransformResponse(Middleware):
    """Response headers (constants and ``$upstream_addr``)."""

    name = "transform_response"
    __init__ = _init
    response_filter = _response_filter


class TransformResponseBody(Middleware):
    """``TransformResponse`` plus the JSON response body."""

    name = "transform_response"
    __init__ = _init
    response_filter = _response_filter
    response_body_filter = _response_body_filter


# ---------------------------------------------------------------- build
def _path_fn(req_levels: list, route_cfg):
    """The path rewrite of the most specific level that has one: fn(ctx, path) -> path."""
    chosen = None
    for r in req_levels:
        if r is not None and (r.strip_prefix or r.path is not None):
            chosen = r
    if chosen is None:
        return None
    rpath = route_cfg.path
    if chosen.strip_prefix:
        if not (isinstance(rpath, str) and rpath.endswith("/*")):
            return None  # a gateway/service default on a route without a wildcard (routes refuse it)
        prefix = rpath[:-2]
        n = len(prefix)

        def strip(ctx, path):
            if not path.startswith(prefix):
                return path
            rest = path[n:]
            return rest if rest[:1] == "/" else "/" + rest
        return strip
    p = chosen.path
    if isinstance(p, str):
        pieces = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", p)
        consts = pieces[0::2]
        names = pieces[1::2]
        if not names:
            return lambda ctx, path: p

        def fill(ctx, path):
            params = ctx.path_params or {}
            out = consts[0]
            for i, name in enumerate(names):
                out += quote(params.get(name, ""), safe="!$&'()*+,=:@%-._~") + consts[i + 1]
            return out
        return fill
    import re2
    pat = re2.compile(p.regex)
    repl = p.replacement

    def sub(ctx, path):
        return pat.subn(repl, path, 1)[0]
    return sub


def _plan(root_cfg, service_cfg, route_cfg):
    """The route's compiled transform (a dict of parts), or None when no level transforms
    anything."""
    if route_cfg is None:
        return None
    gw = getattr(root_cfg, "gateway", None)
    levels = [getattr(gw, "transform", None), getattr(service_cfg, "transform", None),
              getattr(route_cfg, "transform", None)]
    levels = [t for t in levels if t is not None]
    if not levels:
        return None
    req = [t.request for t in levels]
    resp = [t.response for t in levels]
    consts = {"route": route_cfg.name or "", "service": route_cfg.service or ""}
    q_set: dict = {}
    q_remove: set = set()
    for r in req:
        q = r.query if r is not None else None
        if q is None:
            continue
        for k in q.remove:
            q_remove.add(k)
            q_set.pop(k, None)
        for k, val in q.set.items():
            q_set[k] = val
            q_remove.discard(k)
    has_query = bool(q_set or q_remove)
    plan = {
        "route": route_cfg.name or "",
        "path": _path_fn(req, route_cfg),
        "q_drop": frozenset(quote(k, safe="").encode() for k in (*q_remove, *q_set)) if has_query else None,
        "q_add": [],
        "q_vars": [],
        "req_headers": HeaderPlan(_merge_headers([r.headers if r else None for r in req]), consts),
        "resp_headers": HeaderPlan(_merge_headers([r.headers if r else None for r in resp]), consts, True),
        "req_body": None,
        "resp_body": None,
    }
    for k, v in q_set.items():
        key = quote(k, safe="").encode() + b"="
        parts = compile_template(v, consts)
        if len(parts) == 1 and parts[0].__class__ is bytes:
            plan["q_add"].append(key + quote(parts[0], safe="").encode())
        else:
            plan["q_vars"].append((key, parts))
    for key, side in (("req_body", req), ("resp_body", resp)):
        for r in side:
            if r is not None and r.body is not None:
                plan[key] = BodyPlan(r.body)
    if not (plan["path"] or has_query or plan["req_headers"].any or plan["resp_headers"].any
            or plan["resp_headers"].late or plan["req_body"] or plan["resp_body"]):
        return None
    return plan


def build(root_cfg, service_cfg, route_cfg, deps):
    """The request side of the route's transform, or None when it has nothing to do."""
    plan = _plan(root_cfg, service_cfg, route_cfg)
    if plan is None or not (plan["path"] or plan["q_drop"] is not None or plan["req_headers"].any
                            or plan["resp_headers"].late or plan["req_body"]):
        return None
    return (TransformRequestBody if plan["req_body"] else TransformRequest)(plan, deps)


def build_response(root_cfg, service_cfg, route_cfg, deps):
    """The response side of the route's transform, or None when it has nothing to do."""
    plan = _plan(root_cfg, service_cfg, route_cfg)
    if plan is None or not (plan["resp_headers"].any or plan["resp_body"]):
        return None
    return (TransformResponseBody if plan["resp_body"] else TransformResponse)(plan, deps)
