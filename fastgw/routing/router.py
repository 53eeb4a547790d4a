"""The router: picks the one route for a request (L3).

Owns route selection.  Built once per config snapshot from ``(route_cfg, target)``
pairs (grammar and validation in ``routing/compile``); ``match()`` runs once per request
on the path that ``fastgw.http.normalize`` produced, which is also what the upstream
receives, so no spelling of a path reaches a route that its canonical form does not.

Rule 1, specificity (deterministic, whatever the order of routes in the file):
    a. an exact path beats any pattern;
    b. a longer literal prefix beats a shorter one (``/users/me/*`` beats ``/users/{id}``);
    c. after the literal prefix, segment by segment: literal > ``{param}`` > ``*``
       (``/u/{id}/items`` > ``/u/{id}/*`` > ``/u/*``);
    d. same path pattern: exact host > ``*.suffix`` host (longer suffix first) > no host;
    e. then more ``match`` conditions beat fewer (each leaf of the ``match`` tree counts
       one: a header, query or cookie key, a version, and the leaves under
       ``any``/``all``/``not``);
    f. then file order.
    g. regex paths (``path: {regex}``) come after every exact and pattern route: they are
       tried only when no exact or pattern route applies (a catch-all ``/*`` therefore
       hides them); among themselves by d, e, f.
    So path specificity comes before the host: a host-less ``/api/v1/svg/*`` beats a
    host-bound ``/*`` on that host (unlike nginx/Envoy, where the virtual host is chosen
    first).
Rule 2, conditions: a route applies when its path pattern, host and ``match`` conditions
    hold.  Host: compared without port, case-insensitive, a trailing dot ignored;
    ``*.example.com`` matches any subdomain at any depth but not ``example.com``.  The
    ``match`` semantics (headers, query, cookies, version, regex, absent, any/all/not)
    are in ``fastgw.routing.conditions``; they are evaluated on a lazy ``RequestView``
    built only when a candidate has conditions.
Rule 3, methods: the most specific path pattern with an applicable route owns the
    request.  Among its applicable routes (in rule-1 order: host, conditions, file
    order) the first that allows the method wins; if none does: 405
    ``method_not_allowed`` with ``Allow`` = the union of their methods.  A less specific
    pattern never receives a method that a more specific one refuses: with ``/admin/*``
    GET-only and ``/*`` for every method, ``POST /admin/x`` is a 405, not a request for
    ``/*`` (as nginx, where the location is chosen before the method is looked at).
    Regex routes: the first applicable one that allows the method wins, 405 if some
    applied and none allowed it.  Nothing applicable: 404 ``no_route``.  HEAD is allowed
    wherever GET is; a route without methods allows any.  ``preflight=True`` (a CORS
    preflight) ignores methods, so the CORS middleware can answer it.
Rule 4, encoded slash: ``%2F`` stays encoded in a normalised path; when the request had
    one (``encoded_slash=True``) and the chosen route lacks ``allow_encoded_slash``,
    ``match`` raises ``bad_path`` (400).
Rule 5, caching: ``match`` records in ``self.dependent`` whether its last answer read
    the request's conditions (some candidate with ``match`` conditions was evaluated
    before the winner).  ``cache_entry`` turns an answer into what the engine's match
    cache keeps for (host, method, target): the answer itself when it depends on nothing
    else, else a "conditional" marker whose route is None, on which the engine calls
    ``match`` again per request.  So routes without conditions stay cached whatever
    other routes of the config have conditions.

Compiled form: exact paths in a dict (path -> routes in rule-1 order); patterns grouped
by their literal prefix (which ends in ``/``) in a dict, each group sorted by rule 1.
``match`` looks up the path, then each of its ``/``-prefixes from longest to shortest,
but only at lengths some group has, then the regex routes (if any); on success it allocates at most the
prefix slices it looks up, the split tail and the params dict of a ``{param}`` route.
"""

from __future__ import annotations

from fastgw.errors import GatewayError
from fastgw.routing.compile import CompiledRoute, allow_header, compile_route
from fastgw.routing.conditions import RequestView, Versioning

__all__ = ["Router"]


def _hostname(host: str) -> str:
    """``host[:port]`` -> lower-case name without port or trailing dot."""
    if not host:
        return ""
    if ":" in host:
        if host[:1] == "[":
            i = host.find("]")
            if i > 0:
                host = host[: i + 1]
        else:
            host = host[: host.rfind(":")]
    if host.endswith("."):
        host = host[:-1]
    return host.lower()


class Router:
    """Compiled routing table for one config snapshot (module rules 1-4)."""

    __slots__ = ("routes", "warnings", "_exact", "_groups", "_lens", "_maxlen", "_regex", "_versioning",
                 "cacheable", "dependent")

    def __init__(self, entries, versioning=None) -> None:
        """``entries``: ``(route_cfg, target)`` pairs; ``versioning``: ``gateway.versioning``."""
        routes = [compile_route(cfg, target, i) for i, (cfg, target) in enumerate(entries)]
        self.routes: tuple[CompiledRoute, ...] = tuple(routes)
        self._versioning = Versioning(versioning) if versioning is not None else None
        exact: dict[str, list[CompiledRoute]] = {}
        groups: dict[str, list[CompiledRoute]] = {}
        regex: list[CompiledRoute] = []
        for r in routes:
            if r.regex is not None:
                regex.append(r)
                continue
            (exact if r.exact else groups).setdefault(r.prefix, []).append(r)
        self._regex = tuple(sorted(regex, key=lambda r: r.order))
        self._exact = {k: tuple(sorted(v, key=lambda r: r.order)) for k, v in exact.items()}
        self._groups = {k: tuple(sorted(v, key=lambda r: r.order)) for k, v in groups.items()}
        self._lens = frozenset(len(k) for k in self._groups)
        self._maxlen = max(self._lens, default=0)  # no "/" at or past it can end a prefix
        self.warnings: list[str] = _shadowed(self._exact, self._groups, self._regex)
        # Answers may be cached by the caller (the engine's match cache) through
        # ``cache_entry`` (rule 5); a CORS preflight is still never cached there.
        self.cacheable = True
        self.dependent = False  # rule 5: whether the last answer read match conditions

    def match(
        self,
        host: str,
        method: str,
        path: str,
        headers_get,
        query: bytes,
        preflight: bool = False,
        encoded_slash: bool = False,
    ) -> tuple[object, dict[str, str] | None]:
        """Return ``(target, params or None)`` for a normalised ``path``.

        ``headers_get(lname: bytes) -> bytes | None``; ``query`` without ``?``.  Raises
        ``GatewayError`` ``no_route`` (404), ``method_not_allowed`` (405, ``allow`` set) or
        ``bad_path`` (400, module rule 4).
        """
        # Written for speed, to read straight down: the usual request hits the first
        # candidate of the exact dict or of the longest prefix group, a "simple" route,
        # and returns.  The per-candidate checks are written out in both loops on
        # purpose (a helper call per candidate costs more than the check itself).
        allowed: set[str] | None = None
        memo = None  # [hostname, parsed query], filled only for routes with conditions
        hn = None  # hostname, computed on the first host-only route
        routes = self._exact.get(path)
        if routes is not None:
            for r in routes:
                if not r.simple:
                    if r.host_only:  # inline: host routing is common, a call is not free
                        if hn is None:
                            hn = _hostname(host)
                        if hn != r.host_exact if r.host_suffix is None else not hn.endswith(r.host_suffix):
                            continue
                    else:
                        if memo is None:
                            memo = [None, RequestView(headers_get, query, self._versioning)]
                        if not _applies(r, host, memo):
                            continue
                ms = r.methods
                if ms is None or preflight or method in ms:
                    if encoded_slash and not r.allow_encoded_slash:
                        raise _encoded_slash_error()
                    self.dependent = memo is not None
                    return r.target, None
                if allowed is None:
                    allowed = set(ms)
                else:
                    allowed |= ms
            if allowed is not None:  # the exact path owns the request (rule 3)
                raise GatewayError("method_not_allowed", allow=allow_header(allowed))
        lens = self._lens
        groups = self._groups
        j = len(path)
        if j > self._maxlen:  # (a conditional, not min(): a builtin call costs ~5x more)
            j = self._maxlen
        owner = None  # shape of the first applicable pattern route (rule 3)
        while allowed is None:
            j = path.rfind("/", 0, j)
            if j < 0:
                break
            if j + 1 not in lens:
                continue
            group = groups.get(path[: j + 1])
            if group is None:
                continue
            segs = None
            for r in group:
                if owner is not None and r.shape != owner:
                    break  # a less specific pattern: it never gets a refused method
                params = None
                if r.tail:  # params after the prefix: compare the remaining segments
                    if segs is None:
                        segs = path[j + 1 :].split("/")
                    n = len(segs)
                    if (n <= r.ntail) if r.wild else (n != r.ntail):
                        continue
                    params = _match_tail(r.tail, segs)
                    if params is None:
                        continue
                if not r.simple:
                    if r.host_only:  # inline: host routing is common, a call is not free
                        if hn is None:
                            hn = _hostname(host)
                        if hn != r.host_exact if r.host_suffix is None else not hn.endswith(r.host_suffix):
                            continue
                    else:
                        if memo is None:
                            memo = [None, RequestView(headers_get, query, self._versioning)]
                        if not _applies(r, host, memo):
                            continue
                ms = r.methods
                if ms is None or preflight or method in ms:
                    if encoded_slash and not r.allow_encoded_slash:
                        raise _encoded_slash_error()
                    self.dependent = memo is not None
                    return r.target, params
                if allowed is None:
                    allowed = set(ms)
                    owner = r.shape
                else:
                    allowed |= ms
        if allowed is None and self._regex:
            return self._match_regex(host, method, path, headers_get, query, preflight, encoded_slash, memo)
        if allowed is None:
            raise GatewayError("no_route")
        raise GatewayError("method_not_allowed", allow=allow_header(allowed))

    def _match_regex(self, host, method, path, headers_get, query, preflight, encoded_slash, memo):
        """Rule 1g: the regex routes, once no exact or pattern route applied."""
        allowed: set[str] | None = None
        for r in self._regex:
            groups = r.regex.fullmatch_path(path)
            if groups is None:
                continue
            if not r.simple:
                if memo is None and not r.host_only:
                    memo = [None, RequestView(headers_get, query, self._versioning)]
                if not _applies(r, host, memo or [None, None]):
                    continue
            ms = r.methods
            if ms is None or preflight or method in ms:
                if encoded_slash and not r.allow_encoded_slash:
                    raise _encoded_slash_error()
                self.dependent = memo is not None
                return r.target, groups or None
            allowed = set(ms) if allowed is None else allowed | ms
        if allowed is None:
            raise GatewayError("no_route")
        raise GatewayError("method_not_allowed", allow=allow_header(allowed))

    def cache_entry(self, query: bytes, path: str, target, params, encoded_slash: bool) -> tuple:
        """What the match cache keeps for the answer ``match`` just gave (rule 5):
        ``(query, path, target, params)``, or ``(query, path, None, encoded_slash)`` when
        the answer read conditions and must be matched again per request."""
        if self.dependent:
            return (query, path, None, encoded_slash)
        return (query, path, target, params.copy() if params else params)


def _encoded_slash_error() -> GatewayError:
    return GatewayError("bad_path", "encoded slash (%2F) in path is not allowed on this route")


def _match_tail(tail, segs: list[str]) -> dict[str, str] | None:
    """Match the segments after a literal prefix (lengths already checked).  A tail
    starts with a param, so a match has params; return them, or None."""
    params: dict[str, str] = {}
    i = 0
    for kind, text in tail:
        s = segs[i]
        i += 1
        if kind:  # PARAM
            if not s:
                return None
            params[text] = s
        elif s != text:
            return None
    return params


def _applies(r: CompiledRoute, host: str, memo: list) -> bool:
    """Host and match conditions of ``r`` (module rule 2); ``memo`` = [hostname or None,
    RequestView], kept for the rest of the request's match."""
    if r.host_exact is not None or r.host_suffix is not None:
        h = memo[0]
        if h is None:
            h = memo[0] = _hostname(host)
        if r.host_exact is not None:
            if h != r.host_exact:
                return False
        elif not h.endswith(r.host_suffix):
            return False
    return r.cond is None or r.cond(memo[1])


def _shadowed(exact: dict, groups: dict, regex: tuple) -> list[str]:
    """Routes that can never be chosen: same pattern, host and conditions as a
    preceding one whose methods cover theirs."""
    out = []
    for table in (exact, groups, {"": regex}):
        for rs in table.values():
            for i, r in enumerate(rs):
                for q in rs[:i]:
                    if (q.order[:3] == r.order[:3] and q.prefix == r.prefix and q.tail == r.tail
                            and (q.regex.pattern if q.regex else None) == (r.regex.pattern if r.regex else None)
                            and q.wild == r.wild and q.host_exact == r.host_exact
                            and q.host_suffix == r.host_suffix and q.cond_key == r.cond_key
                            and (q.methods is None or (r.methods is not None and r.methods <= q.methods))):
                        out.append(f"route {r.name!r} is shadowed by route {q.name!r} "
                                   "(same path, host and conditions, and its methods are covered)")
                        break
    return out
