"""Route conditions and versions as pure functions (fastgw.routing.conditions), the
router's cache decision, and the config errors of issue 26's settings (with paths)."""

from __future__ import annotations

import pytest

from fastgw.config import ConfigError, load_config_text
from fastgw.errors import GatewayError
from fastgw.routing import Router
from fastgw.routing.conditions import RequestView, Versioning, accept_version, compile_match

BASE = """
gateway:
  host: 127.0.0.1
  port: 0
{GW}
services:
  s:
    url: "http://127.0.0.1:9"
    routes:
{ROUTES}
"""


def load(routes: str, gw: str = ""):
    return load_config_text(BASE.replace("{GW}", gw).replace("{ROUTES}", routes))


def errors(routes: str, gw: str = "") -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load(routes, gw)
    return ei.value.errors


@pytest.mark.parametrize("accept, want", [
    ("application/vnd.arx.v2+json", "2"),
    ("application/vnd.arx.v2.1+json", None),  # the version is the LAST dot-part of the subtype
    ("application/vnd.arx.v10", "10"),
    ("text/html, application/vnd.acme.v3+json;q=0.9", "3"),
    ("application/json; version=2", "2"),
    ('application/json;charset=utf-8; Version="v4"', "4"),
    ("application/json", None),
    ("application/vnd.arx.video+json", None),
    ("", None),
])
def test_accept_version(accept, want):
    assert accept_version(accept) == want


def test_versioning_order_header_then_media_type_then_default():
    cfg = type("V", (), {"header": "API-Version", "media_type": True, "default": "1"})
    v = Versioning(cfg)
    assert v.of({b"api-version": b" V2 ", b"accept": b"application/vnd.x.v3+json"}.get) == "2"
    assert v.of({b"accept": b"application/vnd.x.v3+json"}.get) == "3"
    assert v.of({}.get) == "1"
    cfg.media_type = False
    assert Versioning(cfg).of({b"accept": b"application/vnd.x.v3+json"}.get) == "1"


def test_cookie_parsing_first_value_and_quotes():
    view = RequestView({b"cookie": b'a=1; beta="x y"; a=2; junk; =v'}.get, b"", None)
    assert view.cookies() == {"a": "1", "beta": "x y"}


def test_compiled_match_counts_every_leaf():
    cfg, _ = load('      - {path: "/a", match: {headers: {X-A: "1"}, any: [{query: {q: "*"}}, {cookies: {c: "1"}}],'
                  ' not: {headers: {X-B: {absent: true}}}}}')
    test, n = compile_match(cfg.services["s"].routes[0].match)
    assert n == 4
    view = lambda h, q=b"": RequestView(h.get, q, None)  # noqa: E731
    assert test(view({b"x-a": b"1", b"x-b": b"", b"cookie": b"c=1"}))
    assert not test(view({b"x-a": b"1", b"cookie": b"c=1"}))           # not(absent X-B) fails
    assert test(view({b"x-a": b"1", b"x-b": b"0"}, b"q"))
    assert not test(view({b"x-a": b"1", b"x-b": b"0"}))                # neither side of any


def test_router_marks_only_answers_that_read_conditions():
    cfg, _ = load('      - {path: "/lit"}\n'
                  '      - {path: "/c/*", match: {headers: {X-A: "1"}}}\n'
                  '      - {path: "/c/*"}\n'
                  '      - {path: "/c/{id}"}\n')
    r = Router([(rc, i) for i, rc in enumerate(cfg.services["s"].routes)])
    assert r.match("h", "GET", "/lit", {}.get, b"")[0] == 0 and not r.dependent
    assert r.cache_entry(b"", "/lit", 0, None, False) == (b"", "/lit", 0, None)
    assert r.match("h", "GET", "/c/x/y", {}.get, b"")[0] == 2 and r.dependent
    assert r.cache_entry(b"", "/c/x/y", 2, None, False) == (b"", "/c/x/y", None, False)
    # /c/{id} is more specific than /c/*: its answer reads no condition
    assert r.match("h", "GET", "/c/x", {}.get, b"") == (3, {"id": "x"}) and not r.dependent


@pytest.mark.parametrize("routes, gw, want", [
    ('      - {path: {regex: "^/a/(?<=x)"}}', "",
     "services.s.routes[0].path.regex: invalid regular expression '^/a/(?<=x)' (RE2 syntax): invalid perl operator: (?<="),
    ('      - {path: "/a", match: {headers: {X-A: {regex: "(a"}}}}', "",
     "services.s.routes[0].match.headers.X-A.regex: invalid regular expression '(a' (RE2 syntax): missing ): (a"),
    ('      - {path: "/a", match: {or: [{headers: {X-A: "1"}}]}}', "", "services.s.routes[0].match.or: unknown field"),
    ('      - {path: "/a", match: {any: [{}]}}', "",
     "services.s.routes[0].match.any[0]: an empty condition holds for every request: give at least one"),
    ('      - {path: "/a", match: {any: []}}', "", "services.s.routes[0].match.any: must not be empty"),
    ('      - {path: "/a", match: {cookies: {b: {regex: "x", absent: true}}}}', "",
     "services.s.routes[0].match.cookies.b: give exactly one of 'regex: \"...\"' or 'absent: true'"),
    ('      - {path: "/a", match: {headers: {X-A: {absent: false}}}}', "",
     "services.s.routes[0].match.headers.X-A: give exactly one of 'regex: \"...\"' or 'absent: true'"),
    ('      - {path: "/a", deprecation: {deprecated: 2027-07-01, sunset: 2027-01-01}}', "",
     "services.s.routes[0].deprecation.sunset: must not be before 'deprecated' (a version is deprecated first, then removed)"),
    ('      - {path: "/a", deprecation: {deprecated: 2027-07-01, gone_after_sunset: true}}', "",
     "services.s.routes[0].deprecation.gone_after_sunset: needs a 'sunset' date"),
    ('      - {path: "/a", deprecation: {deprecated: "next year"}}', "",
     "services.s.routes[0].deprecation.deprecated: expected a date like 2027-01-01 or 2027-01-01T12:00:00Z, got 'next year'"),
    ('      - {path: "/a", deprecation: {deprecated: 2027-01-01, link: "a b"}}', "",
     "services.s.routes[0].deprecation.link: expected a URL or path without spaces, quotes or '<>' (it goes into a Link header), got 'a b'"),
    ('      - {path: "/a", match: {version: "2"}}', "",
     "services.s.routes[0].match: a 'version' condition needs gateway.versioning (how requests name a version)"),
    ('      - {path: "/a", match: {version: "2"}, version: "3"}', "  versioning: {}",
     "services.s.routes[0].version: '3' differs from match.version '2'; give one, or the same"),
    ('      - {path: "/a", version: "2 beta"}', "",
     "services.s.routes[0].version: invalid version '2 beta': use letters, digits, '.', '-' or '_' (like \"2\" or \"2.1\")"),
])
def test_invalid_config_is_refused_with_paths(routes, gw, want):
    assert want in errors(routes, gw)


def test_valid_contract_example_loads():
    cfg, _ = load(r'''      - path: "/api/items/*"
        match: {headers: {X-Version: {regex: "^2\\."}}, cookies: {beta: "1"}, not: {query: {legacy: "*"}}}
        version: "1"
        deprecation: {deprecated: 2027-01-01, sunset: 2027-07-01, link: "https://docs.example/v1", successor: "/api/v2/items", gone_after_sunset: true}
''', '  versioning: {header: API-Version, media_type: true, default: "1"}')
    rc = cfg.services["s"].routes[0]
    assert rc.deprecation.deprecated == 1798761600 and rc.deprecation.sunset == 1814400000
    assert cfg.gateway.versioning.default == "1" and rc.served_version() == "1"


def test_deprecation_middleware_counts_by_client_class_and_prebuilds_headers():
    from fastgw.middleware.deprecation import M_DEPRECATED, build
    from fastgw.pipeline.deps import Deps

    class _Metrics:
        def __init__(self):
            self.got = []

        def inc(self, name, labels=(), value=1):
            self.got.append((name, dict(labels)))

    cfg, _ = load('      - {path: "/a", name: old, version: "1", deprecation: {deprecated: 2020-01-01, sunset: 2099-01-01}}\n'
                  '      - {path: "/b", name: soon, deprecation: {deprecated: 2099-01-01}}\n')
    metrics = _Metrics()
    old, soon = (build(cfg, None, rc, Deps(cfg, metrics=metrics)) for rc in cfg.services["s"].routes)
    ctx = type("Ctx", (), {"user": "alice"})()
    assert old.request_filter(ctx) is None
    old.logging(ctx, None)
    ctx.user = None
    old.logging(ctx, None)
    soon.logging(ctx, None)  # not deprecated yet: not counted
    assert metrics.got == [
        (M_DEPRECATED, {"route": "old", "version": "1", "outcome": "served", "client": "authenticated"}),
        (M_DEPRECATED, {"route": "old", "version": "1", "outcome": "served", "client": "anonymous"}),
    ]
    assert old._after == ((b"deprecation", b"@1577836800"), (b"sunset", b"Thu, 01 Jan 2099 00:00:00 GMT"))
    assert soon._before == ()


def test_regex_path_params_and_whole_path_match():
    cfg, _ = load('      - {path: {regex: "^/f/(?P<name>[a-z]+)(?:-(?P<rev>[0-9]+))?\\\\.pdf$"}}\n'
                  '      - {path: "/g/*", methods: [POST]}\n')
    r = Router([(rc, i) for i, rc in enumerate(cfg.services["s"].routes)])
    assert r.match("h", "GET", "/f/report-2.pdf", {}.get, b"") == (0, {"name": "report", "rev": "2"})
    assert r.match("h", "GET", "/f/report.pdf", {}.get, b"") == (0, {"name": "report"})  # unmatched group left out
    with pytest.raises(GatewayError) as ei:  # the whole path must match
        r.match("h", "GET", "/f/x.pdfx", {}.get, b"")
    assert ei.value.status == 404
    with pytest.raises(GatewayError) as ei:  # a pattern owns its paths before any regex: 405
        r.match("h", "GET", "/g/x.pdf", {}.get, b"")
    assert ei.value.status == 405


def test_printed_config_loads_again_with_dates_regexes_and_combinators():
    import yaml

    from fastgw.config.redact import to_printable

    routes = ('      - path: {regex: "^/f/[a-z]+$"}\n'
              '        match: {any: [{cookies: {b: {regex: "^x"}}}, {headers: {X-D: {absent: true}}}], not: {query: {q: "*"}}}\n'
              '        deprecation: {deprecated: 2027-01-01, sunset: "2027-07-01T12:30:00Z"}\n')
    cfg, _ = load(routes)
    printed = to_printable(cfg)
    dep = printed["services"]["s"]["routes"][0]["deprecation"]
    assert dep["deprecated"] == "2027-01-01" and dep["sunset"] == "2027-07-01T12:30:00Z"
    again, _ = load_config_text(yaml.safe_dump(printed))
    assert again.services["s"].routes[0] == cfg.services["s"].routes[0]
