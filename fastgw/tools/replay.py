"""``fastgw replay --config NEW.yaml ACCESS.log``: routing decisions NEW would change, offline.

Every access-log line (JSON, ``fastgw.middleware.access_log``) is routed through NEW's
router (the same ``fastgw.routing.Router`` the workers build) from its ``authority``,
``method`` and ``path``.  A decision is the tuple

    route, service, method allowed, auth required, route rate-limit rule

and it is compared with the "before" decision: the same computation on ``--old OLD.yaml``
when given, else what the line itself says (its ``route``; 404 = no route, 405 = method
not allowed; the other fields are then not compared).

Undecidable: by default the access log holds neither the request headers nor the query
string, so a request whose route could depend on a route's ``match`` conditions (headers,
query) in either config is counted as undecidable, not guessed.  It is decided by routing
twice, once with every condition failing and once with every condition holding: the same
answer means the conditions do not matter.  With the opt-in access-log fields
(``access_log.query: true``, ``access_log.headers: [names]``) a line that carries every
header name and the query that the config's conditions use is routed on them, exactly.  Lines that are not access records (other log
streams sharing the file) are skipped and counted.
"""

from __future__ import annotations

import sys
from collections import Counter

import msgspec
import orjson

from fastgw.config import ConfigError, load_config
from fastgw.errors import GatewayError
from fastgw.http.normalize import normalize_path
from fastgw.routing import Router

FIELDS = ("route", "service", "method_allowed", "auth_required", "rate_limit")


class Decider:
    """Routing decisions of one config, with and without the ``match`` conditions."""

    def __init__(self, cfg) -> None:
        entries, free = [], []
        for svc_name, svc in cfg.services.items():
            for rc in svc.routes:
                rl = rc.rate_limit
                limit = None if rl is None else f"{rl.requests_per_second:g}/s burst {rl.burst}"
                target = (rc.name, svc_name, bool(rc.auth), limit)
                entries.append((rc, target))
                free.append((msgspec.structs.replace(rc, match=None), target))
        self.conditional = any(rc.match is not None for rc, _ in entries)
        self.header_names = {h for rc, _ in entries if rc.match is not None for h in rc.match.headers}
        self.uses_query = any(rc.match is not None and rc.match.query for rc, _ in entries)
        self.never = Router(entries)        # conditions fail: no header, no query
        self.always = Router(free) if self.conditional else None

    @staticmethod
    def _route(router: Router, host: str, method: str, path: str, get=lambda name: None, query: bytes = b""):
        try:
            target, _ = router.match(host, method, path, get, query)
        except GatewayError as e:
            if e.status == 405:
                return ("(405)", None, False, None, None)
            return ("(none)", None, None, None, None)
        name, svc, auth, limit = target
        return (name, svc, True, auth, limit)

    def decide(self, host: str, method: str, path: str, headers: dict | None = None, query: str | None = None):
        """The decision tuple, or None when it depends on headers or query the line lacks."""
        if self.conditional and self.header_names <= set(headers or ()) and (query is not None or not self.uses_query):
            hb = {k.encode("latin-1"): v.encode("latin-1") for k, v in (headers or {}).items() if v is not None}
            return self._route(self.never, host, method, path, hb.get, (query or "").encode("latin-1"))
        a = self._route(self.never, host, method, path)
        if self.always is not None and self._route(self.always, host, method, path) != a:
            return None
        return a


def _from_log(rec: dict):
    st = rec.get("status")
    if st == 404 and not rec.get("route"):
        return ("(none)", None, None, None, None)
    if st == 405:
        return ("(405)", None, False, None, None)
    return (rec.get("route"), None, None, None, None)


def run(new_path: str, log_path: str, old_path: str | None = None, out=sys.stdout, err=sys.stderr,
        show: int = 20) -> int:
    """Print the report; exit 0 (no decision changes), 1 (some change), 2 (an error)."""
    deciders = []
    for path in [new_path] + ([old_path] if old_path else []):
        try:
            deciders.append(Decider(load_config(path)[0]))
        except ConfigError as e:
            print(f"fastgw replay: {path}: invalid config:", file=err)
            for line in e.errors:
                print(f"  {line}", file=err)
            return 2
    new, old = deciders[0], (deciders[1] if old_path else None)
    total = skipped = undecidable = changed = 0
    fields: Counter = Counter()
    examples: Counter = Counter()
    try:
        f = open(log_path, "rb")
    except OSError as e:
        print(f"fastgw replay: cannot read {log_path}: {e.strerror or e}", file=err)
        return 2
    with f:
        for line in f:
            try:
                rec = orjson.loads(line)
                method, raw_path = rec["method"], rec["path"]
                host = rec.get("authority") or ""
            except (orjson.JSONDecodeError, KeyError, TypeError):
                skipped += 1
                continue
            total += 1
            try:
                path, _ = normalize_path(raw_path.encode("latin-1", "replace"))
            except GatewayError:
                path = None
            if path is None:
                continue                            # the gateway answered 400 before routing
            hd, q = rec.get("headers"), rec.get("query")
            after = new.decide(host, method, path, hd, q)
            before = old.decide(host, method, path, hd, q) if old is not None else _from_log(rec)
            if after is None or before is None:
                undecidable += 1
                continue
            # a field unknown on either side (no route there, or not in the log) is not compared
            diffs = [(i, n) for i, n in enumerate(FIELDS)
                     if before[i] is not None and after[i] is not None and before[i] != after[i]]
            if diffs:
                changed += 1
                for i, n in diffs:
                    fields[n] += 1
                    examples[(method, raw_path, n, str(before[i]), str(after[i]))] += 1
    print(f"replay: {total} requests, {changed} decisions would change, {undecidable} undecidable "
          f"(need headers or query the access log does not hold)"
          + (f", {skipped} line{'' if skipped == 1 else 's'} skipped (not access records)" if skipped else ""),
          file=out)
    for n in FIELDS:
        if fields[n]:
            print(f"  {n}: {fields[n]}", file=out)
    for (method, p, n, a, b), count in examples.most_common(show):
        print(f"  {method} {p}: {n} {a} -> {b} ({count} request{'' if count == 1 else 's'})", file=out)
    return 1 if changed else 0
