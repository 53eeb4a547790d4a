"""``fastgw routes``: the routing table of a config file, for people and tools (L3).

    fastgw routes -c FILE [--format markdown|json]

One row per route, in the order the router tries them for a path (module rules of
``fastgw.routing.router``: exact paths, then patterns by specificity, then regex paths;
ties by host, number of conditions, file order), with what a client or a reviewer asks
about a route: its service, host, path, methods, conditions, split, API version, auth
and roles, rate limit, and the deprecation dates.  Markdown is for docs and change reviews
(the seed's "version documentation"); JSON (a list of objects, the same keys) for tools.
Dates are ISO 8601 (UTC).  Exit 0, or 1 when the config is invalid (errors on stderr).
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from fastgw.routing.compile import compile_route

COLUMNS = ("service", "route", "host", "path", "methods", "match", "split", "version", "auth",
           "rate_limit", "deprecated", "sunset", "successor", "gone_after_sunset")


def _iso(t) -> str | None:
    return None if t is None else t.isoformat()


def _compact(v):
    """``v`` (plain data) without the keys left at their empty default (null, {}, [], false)."""
    if isinstance(v, dict):
        return {k: _compact(x) for k, x in v.items() if x not in (None, {}, [], False)}
    if isinstance(v, list):
        return [_compact(x) for x in v]
    return v


def _split(sp) -> dict | None:
    if sp is None:
        return None
    out = {"to": [{"service": s.service, "weight": s.weight} for s in sp.to]}
    if sp.hash_key:
        out["hash_key"] = sp.hash_key
    if sp.override is not None:
        out["override"] = _compact(msgspec.to_builtins(sp.override))
        out["canary"] = sp.canary()
    return out


def _limit(rule) -> dict | None:
    if rule is None:
        return None
    return {"requests_per_second": rule.requests_per_second, "burst": rule.burst,
            "key": rule.key, "backend": rule.backend}


def rows(config) -> list[dict]:
    """The table as dicts (``COLUMNS``), in router precedence order."""
    entries = []
    for sname, svc in config.services.items():
        for i, rc in enumerate(svc.routes):
            entries.append((rc, (sname, svc, rc)))
    compiled = [compile_route(rc, t, i) for i, (rc, t) in enumerate(entries)]
    # exact paths, then patterns (longest literal prefix first, then shape...), then regex
    compiled.sort(key=lambda r: (2 if r.regex is not None else 0 if r.exact else 1,
                                 r.prefix if r.exact else "", -len(r.prefix), r.order))
    out = []
    for r in compiled:
        sname, svc, rc = r.target
        dep = rc.deprecation
        auth = "no"
        if rc.roles is not None:
            auth = "roles: " + (", ".join(rc.roles) if isinstance(rc.roles, list) else
                                "; ".join(f"{m} {', '.join(rs)}" for m, rs in rc.roles.items()))
        elif rc.auth:
            auth = "yes"
        limit = _limit(rc.rate_limit)
        if limit is None and svc.rate_limit is not None:
            limit = dict(_limit(svc.rate_limit), scope="service")
        out.append({
            "service": sname,
            "route": rc.name or r.name,
            "host": rc.host or "*",
            "path": rc.path if isinstance(rc.path, str) else {"regex": rc.path.regex},
            "methods": sorted(r.methods) if r.methods is not None else ["*"],
            "match": _compact(msgspec.to_builtins(rc.match)) or None if rc.match is not None else None,
            "split": _split(rc.split),
            "version": rc.served_version(),
            "auth": auth,
            "rate_limit": limit,
            "deprecated": _iso(dep.deprecated) if dep else None,
            "sunset": _iso(dep.sunset) if dep else None,
            "successor": dep.successor if dep else None,
            "gone_after_sunset": bool(dep and dep.gone_after_sunset),
        })
    return out


def _cell(v) -> str:
    if v is None or v is False:
        return ""
    if v is True:
        return "yes"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        if "regex" in v and len(v) == 1:
            return "regex: " + v["regex"]
        if "to" in v and "weight" in str(v):
            s = ", ".join(f"{x['service']} {x['weight']:g}" for x in v["to"])
            return s + (f" by {v['hash_key']}" if "hash_key" in v else "") + (
                f" (override -> {v['canary']})" if "canary" in v else "")
        if "requests_per_second" in v:
            s = f"{v['requests_per_second']:g}/s burst {v['burst']} by {v['key']}"
            return s + (" (service)" if v.get("scope") else "")
        return msgspec.json.encode(v).decode()
    return str(v)


def markdown(table: list[dict]) -> str:
    """The table as GitHub-flavoured Markdown (``|`` in values escaped)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = [_cell(row[c]).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(f"`{x}`" if c in ("path", "match") and x else x
                                       for c, x in zip(COLUMNS, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``fastgw routes`` (see the module doc)."""
    p = argparse.ArgumentParser(prog="fastgw routes", description="Print the routing table of a config file.")
    p.add_argument("-c", "--config", default="config/gateway.yaml", metavar="FILE",
                   help="config file (YAML; default: %(default)s)")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="default: %(default)s")
    args = p.parse_args(argv)
    from fastgw.config import ConfigError, load_config

    try:
        cfg, _warnings = load_config(args.config)
    except ConfigError as e:
        print(f"fastgw: {args.config}: invalid config:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fastgw: cannot read {args.config}: {e.strerror or e}", file=sys.stderr)
        return 1
    table = rows(cfg)
    if args.format == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(table), indent=2).decode() + "\n")
    else:
        sys.stdout.write(markdown(table))
    return 0
