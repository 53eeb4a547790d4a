"""Config loader: every error with its exact path and message, all at once.

Each case edits a small valid config (BASE) at one place and states the exact error
lines the loader must give.  YAML-level problems (syntax, duplicate keys) use raw text.
"""

from __future__ import annotations

import pytest
import yaml

from fastgw.config import ConfigError, load_config, load_config_data, load_config_text

from tests.support.config import BASE, DELETE, P0, R0, SVC, edit, errors_of  # noqa: F401

SECRET = "0123456789abcdef0123456789abcdef"  # 32 bytes: HS256's minimum

CASES = [
    # gateway
    ("gateway.port", 70000, "gateway.port: must be between 0 and 65535, got 70000"),
    ("gateway.port", -1, "gateway.port: must be between 0 and 65535, got -1"),
    ("gateway.port", "abc", "gateway.port: expected an integer, got 'abc'"),
    ("gateway.port", "80", "gateway.port: expected an integer, got '80'"),
    ("gateway.port", True, "gateway.port: expected an integer, got true"),
    ("gateway.timeout", "30 seconds", "gateway.timeout: expected a duration like '30s', got '30 seconds'"),
    ("gateway.timeout", 0, "gateway.timeout: must be greater than 0, got 0s"),
    ("gateway.max_connections", 0, "gateway.max_connections: must be at least 1, got 0"),
    ("gateway.workers", 0, "gateway.workers: must be between 1 and 1024, got 0"),
    ("gateway.trusted_proxies", ["127.0.0.1/32", "10.0.0.1/8"],
     "gateway.trusted_proxies[1]: invalid CIDR '10.0.0.1/8': host bits set (did you mean '10.0.0.0/8'?)"),
    ("gateway.trusted_proxies", ["lan"],
     "gateway.trusted_proxies[0]: invalid CIDR 'lan': expected an address or network like '10.0.0.0/8'"),
    ("gateway.trusted_proxies", "10.0.0.0/8", "gateway.trusted_proxies: expected a list, got '10.0.0.0/8'"),
    ("gateway.health_path", "healthz", "gateway.health_path: must start with '/', got 'healthz'"),
    ("gateway.request_id_header", "X Request", "gateway.request_id_header: invalid header name 'X Request'"),
    ("gateway.server_header", "a\r\nb",
     "gateway.server_header: invalid header value: control characters or leading/trailing whitespace"),
    ("gateway.limits.max_body_size", "1.5m", "gateway.limits.max_body_size: expected a size like '1m', got '1.5m'"),
    ("gateway.limits.max_headers", 0, "gateway.limits.max_headers: must be between 1 and 10000, got 0"),
    ("gateway.limits.max_header_size", "64k",
     "gateway.limits.max_header_size: is larger than max_headers_size (65536 > 32768 bytes)"),
    ("gateway.timeouts.keepalive", "-5s", "gateway.timeouts.keepalive: expected a duration like '30s', got '-5s'"),
    ("gateway.drain.timeout", 0, "gateway.drain.timeout: must be greater than 0, got 0s"),
    ("gateway.proxy_protocol", {"enabled": True},
     "gateway.proxy_protocol.enabled: PROXY protocol needs trusted sources: "
     "set proxy_protocol.trusted_cidrs or gateway.trusted_proxies"),
    ("gateway.tls", {"cert_file": "c.pem"}, "gateway.tls.key_file: missing required field"),
    ("gateway.pathh", 1, "gateway.pathh: unknown field"),
    ("gateway", [], "gateway: expected an object, got a list"),
    # services
    (f"{SVC}.timeout", "30 seconds", "services.svg-parser.timeout: expected a duration like '30s', got '30 seconds'"),
    (f"{SVC}.url", "ftp://x", "services.svg-parser.url: expected an http:// or https:// URL like 'http://host:8080', got 'ftp://x'"),
    (f"{SVC}.url", "http://", "services.svg-parser.url: invalid URL 'http://': no host"),
    (f"{SVC}.url", "http://h:99999", "services.svg-parser.url: invalid URL 'http://h:99999': Port out of range 0-65535"),
    (f"{SVC}.url", "http://u:p@h", "services.svg-parser.url: invalid URL: credentials in the URL are not supported"),
    (f"{SVC}.url", "http://h/a?x=1", "services.svg-parser.url: invalid URL 'http://h/a?x=1': a query or fragment is not allowed"),
    (f"{SVC}.url", DELETE, "services.svg-parser.url: missing: set url, instances with at least one url, or discovery"),
    (f"{SVC}.instances", [{"url": "http://a:1"}], "services.svg-parser.url: set either url or instances, not both"),
    (f"{SVC}.instances", [{"url": "http://a:1", "weight": -1}],
     "services.svg-parser.instances[0].weight: must be between 0 and 10000, got -1"),
    (f"{SVC}.instances", [{"weight": 1}], "services.svg-parser.instances[0].url: missing required field"),
    (f"{SVC}.retries", 11, "services.svg-parser.retries: must be between 0 and 10, got 11"),
    (f"{SVC}.health", "health", "services.svg-parser.health: expected an http(s) URL or a path starting with '/', got 'health'"),
    (f"{SVC}.pool", {"max_connections": 0}, "services.svg-parser.pool.max_connections: must be at least 1, got 0"),
    (f"{SVC}.pool", {"idle_timeout": "1 min"}, "services.svg-parser.pool.idle_timeout: expected a duration like '30s', got '1 min'"),
    (f"{SVC}.tls", {"verify": "no"}, "services.svg-parser.tls.verify: expected true or false, got 'no'"),
    (f"{SVC}.routes", {"path": "/x"}, "services.svg-parser.routes: expected a list, got an object"),
    (f"{SVC}.bogus", 1, "services.svg-parser.bogus: unknown field"),
    ("services.bad name", {"url": "http://a:1"},
     "services.bad name: invalid name 'bad name': use letters, digits, '-' and '_', starting with a letter or digit (at most 100)"),
    ("services.x", "http://a:1", "services.x: expected an object, got 'http://a:1'"),
    # routes
    (f"{R0}.pathh", "/x", f"{P0}.pathh: unknown field; did you mean `path`?"),
    (f"{R0}.path", DELETE, f"{P0}.path: missing required field"),
    (f"{R0}.path", "api/*", f"{P0}.path: must start with '/', got 'api/*'"),
    (f"{R0}.path", "/api/*/x", f"{P0}.path: invalid path '/api/*/x': '*' is only allowed as the last segment, as in '/api/*'"),
    (f"{R0}.path", "/api*", f"{P0}.path: invalid path '/api*': '*' is only allowed as the whole last segment, as in '/api/*'"),
    (f"{R0}.path", "/a//b", f"{P0}.path: invalid path '/a//b': empty segment ('//')"),
    (f"{R0}.path", "/a/../b", f"{P0}.path: invalid path '/a/../b': dot segments are not allowed"),
    (f"{R0}.path", "/a/%61", f"{P0}.path: invalid path '/a/%61': %61 encodes 'a'; write it decoded (paths are normalised)"),
    (f"{R0}.path", "/a/%2f", f"{P0}.path: invalid path '/a/%2f': write %2F (escapes are normalised to upper case)"),
    (f"{R0}.path", "/a;b", f"{P0}.path: invalid path '/a;b': character ';' is not allowed in a route path"),
    (f"{R0}.path", "/a/{id}/{id}", f"{P0}.path: invalid path '/a/{{id}}/{{id}}': parameter 'id' appears twice"),
    (f"{R0}.path", "/a/x{id}",
     f"{P0}.path: invalid path '/a/x{{id}}': a parameter is a whole segment named like '{{id}}', got 'x{{id}}'"),
    (f"{R0}.path", "/a?b=1", f"{P0}.path: invalid path '/a?b=1': a query or fragment is not part of a route path (use match.query)"),
    (f"{R0}.path", "/healthz", f"{P0}.path: '/healthz' is gateway.health_path, which the gateway answers itself"),
    (f"{R0}.methods", ["GET", "FETCH"], f"{P0}.methods[1]: unknown method 'FETCH'"),
    (f"{R0}.methods", ["TRACE"], f"{P0}.methods[0]: TRACE is not proxied (it echoes credentials back: cross-site tracing)"),
    (f"{R0}.methods", "GET", f"{P0}.methods: expected a list, got 'GET'"),
    (f"{R0}.methods", [], f"{P0}.methods: must list at least one method"),
    (f"{R0}.methods", ["get", "GET"], f"{P0}.methods[1]: duplicate method 'GET'"),
    (f"{R0}.service", "other", f"{P0}.service: must be 'svg-parser' (the service this route is under), got 'other'"),
    (f"{R0}.name", "svg parser", f"{P0}.name: invalid name 'svg parser': use letters, digits, '-' and '_', starting with a letter or digit (at most 100)"),
    (f"{R0}.name", "cmms-service-1", "services.cmms-service.routes[1].name: duplicate route name 'cmms-service-1' (also services.svg-parser.routes[0])"),
    (f"{R0}.host", "api.example.com:8080", f"{P0}.host: invalid host 'api.example.com:8080': give a host name without port or scheme"),
    (f"{R0}.host", "bad_host!", f"{P0}.host: invalid host 'bad_host!': expected a host name like 'api.example.com' or '*.example.com'"),
    (f"{R0}.match", {"headers": {"X Bad": "1"}}, f"{P0}.match.headers.X Bad: invalid header name 'X Bad'"),
    (f"{R0}.match", {"headers": {"X-A": "1", "x-a": "2"}},
     f"{P0}.match.headers.x-a: duplicate key: the same as an earlier key once normalised ('x-a')"),
    (f"{R0}.cors", True, f"{P0}.cors: 'true' is not allowed: omit the key to inherit the global section, "
                         "give an object to replace it, or 'false' to disable it on this route"),
    (f"{R0}.ip_filter", "off", f"{P0}.ip_filter: expected an object, true or false or null, got 'off'"),
    (f"{R0}.max_body_size", "big", f"{P0}.max_body_size: expected a size like '1m', got 'big'"),
    (f"{R0}.timeout", 0, f"{P0}.timeout: must be greater than 0, got 0s"),
    (f"{R0}.auth", True, f"{P0}.auth: needs an 'auth' section with a key (auth.jwt_secret, keys or jwks); there is none"),
    (f"{R0}.roles", ["admin"], f"{P0}.roles: needs an 'auth' section with a key (auth.jwt_secret, keys or jwks); there is none"),
    (f"{R0}.roles", [], f"{P0}.roles: must not be empty (nobody could call the route); remove it or list roles"),
    (f"{R0}.rate_limit", {"requests_per_second": 10}, f"{P0}.rate_limit.burst: missing required field"),
    # monitoring
    ("monitoring.metrics_port", 8080, "monitoring.metrics_port: the same port as gateway.port (8080)"),
    ("monitoring.metrics_port", 65536, "monitoring.metrics_port: must be between 0 and 65535, got 65536"),
    ("monitoring.logging.level", "verbose",
     "monitoring.logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'"),
    ("monitoring.logging.format", "xml", "monitoring.logging.format: expected one of 'json', 'text', got 'xml'"),
    ("monitoring.logging.output", "", "monitoring.logging.output: must not be empty"),
    ("monitoring.logging.access_log", {"enabled": 1}, "monitoring.logging.access_log.enabled: expected true or false, got 1"),
    ("monitoring.circuit_breaker", {"failure_threshold": 5}, "monitoring.circuit_breaker.timeout: missing required field"),
    ("monitoring.circuit_breaker", {"failure_threshold": 0, "timeout": "1s"},
     "monitoring.circuit_breaker.failure_threshold: must be between 1 and 1000000, got 0"),
    ("monitoring.circuit_breaker", {"failure_threshold": 5, "timeout": "1s", "half_open_requests": 0},
     "monitoring.circuit_breaker.half_open_requests: must be between 1 and 1000, got 0"),
    ("monitoring.circuit_breaker", {"failure_threshold": 5, "timeout": "0s"},
     "monitoring.circuit_breaker.timeout: must be greater than 0, got 0s"),
    ("monitoring.circuit_breaker", {"failure_threshold": 5, "timeout": "1s", "half_open": 2},
     "monitoring.circuit_breaker.half_open: unknown field"),
    ("services.svg-parser.circuit_breaker", True,
     "services.svg-parser.circuit_breaker: true is not a breaker: give {failure_threshold, timeout} (or leave it "
     "out for monitoring.circuit_breaker), or false to turn it off"),
    ("services.svg-parser.circuit_breaker", "off",
     "services.svg-parser.circuit_breaker: expected an object, true or false or null, got 'off'"),
    ("services.svg-parser.circuit_breaker", {"timeout": "5s"},
     "services.svg-parser.circuit_breaker.failure_threshold: missing required field"),
    ("monitoring.health_check_interval", "often",
     "monitoring.health_check_interval: expected a duration like '30s', got 'often'"),
    # root
    ("gatway", {}, "gatway: unknown field; did you mean `gateway`?"),
    ("services", DELETE, "services: missing required field"),
    ("services", [], "services: expected an object, got a list"),
]


@pytest.mark.parametrize("path,value,expected", CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_error_path_and_message(path, value, expected):
    assert errors_of(edit(BASE, path, value)) == [expected]


AUTH = {"jwt_secret": SECRET, "roles": ["admin", "viewer"]}

AUTH_CASES = [
    (f"{R0}.roles", ["admin", "adminn"], [f"{P0}.roles[1]: unknown role 'adminn' (not in auth.roles)"]),
    (f"{R0}.roles", {"GET": ["viewer"], "POST": ["root"]},
     [f"{P0}.roles.POST: POST is not one of the route's methods",
      f"{P0}.roles.POST[0]: unknown role 'root' (not in auth.roles)"]),
    (f"{R0}.roles", {"FETCH": ["viewer"]}, [f"{P0}.roles.FETCH: unknown method 'FETCH'"]),
    (f"{R0}.roles", {"HEAD": ["viewer"]}, [f"{P0}.roles: no entry for GET: every method of the route needs roles"]),
    ("rate_limit", {"admni": {"requests_per_second": 1, "burst": 2}},
     ["rate_limit.admni: unknown tier 'admni': a tier is 'default', 'authenticated' or a role from auth.roles"]),
    ("rate_limit", {"admin": {"requests_per_second": 1, "burst": "x"}},
     ["rate_limit.admin.burst: expected an integer, got 'x'"]),
    ("rate_limit", {"admin": {"requests_per_second": 1, "burst": 2, "key": "ip"}},
     ["rate_limit.admin.key: not allowed in a tier: a tier sets only requests_per_second and burst"]),
    ("rate_limit", {"admin": {"requests_per_second": 1, "burst": 2, "bogus": 1}}, ["rate_limit.admin.bogus: unknown field"]),
    ("rate_limit", {"admin": 5}, ["rate_limit.admin: expected an object, got 5"]),
    ("rate_limit", {"exempt_roles": ["root"]}, ["rate_limit.exempt_roles[0]: unknown role 'root' (not in auth.roles)"]),
    ("rate_limit", {"table_slots": 1000}, ["rate_limit.table_slots: must be a power of two, got 1000"]),
    ("rate_limit", {"table_slots": 1 << 25}, ["rate_limit.table_slots: must be at most 16777216, got 33554432"]),
    ("rate_limit", {"redis": {"on_error": "maybe"}}, ["rate_limit.redis.on_error: expected one of 'closed', 'open', got 'maybe'"]),
    ("rate_limit", {"headers": {"ietf": "yes please"}}, ["rate_limit.headers.ietf: expected true or false, got 'yes please'"]),
    ("auth.routes", {"nosuch": {}}, ["auth.routes.nosuch: no route is named 'nosuch'"]),
]


@pytest.mark.parametrize("path,value,expected", AUTH_CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in AUTH_CASES])
def test_auth_related_errors(path, value, expected):
    doc = edit(BASE, "auth", AUTH)
    assert errors_of(edit(doc, path, value)) == expected


def test_auth_section_without_key():
    doc = edit(edit(BASE, "auth", {"roles": ["admin"]}), f"{R0}.auth", True)
    assert errors_of(doc) == [f"{P0}.auth: needs a key in the 'auth' section (auth.jwt_secret, keys or jwks); none is set"]


def test_empty_secret_from_env_counts_as_no_key():
    doc = edit(edit(BASE, "auth", {"jwt_secret": "${JWT_SECRET:-}"}), f"{R0}.auth", True)
    assert errors_of(doc, env={"JWT_SECRET": ""}) == [
        f"{P0}.auth: needs a key in the 'auth' section (auth.jwt_secret, keys or jwks); none is set"
    ]


def test_ambiguous_routes():
    doc = edit(BASE, "services.cmms-service.routes.1.path", "/api/v1/cmms/a")
    assert errors_of(doc) == [
        "services.cmms-service.routes[1].path: ambiguous: services.cmms-service.routes[0] has the same host, "
        "path and match conditions and also allows GET, HEAD"
    ]
    # a different host, a match condition or disjoint methods make them distinct
    for key, value in (("host", "a.example.com"), ("match", {"query": {"v": "2"}}), ("methods", ["POST"])):
        load_config_data(edit(doc, f"services.cmms-service.routes.1.{key}", value), env={})


def test_ambiguous_params_whatever_their_names():
    doc = edit(BASE, "services.cmms-service.routes.0.path", "/u/{id}")
    doc = edit(doc, "services.cmms-service.routes.1.path", "/u/{name}")
    assert errors_of(doc)[0].startswith("services.cmms-service.routes[1].path: ambiguous")


def test_all_errors_at_once():
    text = """
gateway:
  port: 70000
  timeout: 30 seconds
services:
  svg-parser:
    url: "http://127.0.0.1:${SVG_PORT}"
    timeout: "30 seconds"
    routes:
      - path: "/api/v1/svg/*"
        pathh: "/x"
      - path: "/api/v1/svg/health"
        service: svg
  cmms-service:
    url: "http://127.0.0.1:8102"
    routes:
      - path: /a
      - path: /b
      - path: /c
        methods: [GET, FETCH]
      - path: /d
        name: svg-parser-1
auth:
  roles: [admin]
monitoring:
  logging: {level: loud}
"""
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, env={})
    assert exc.value.errors == [  # in file order
        "gateway.port: must be between 0 and 65535, got 70000",
        "gateway.timeout: expected a duration like '30s', got '30 seconds'",
        "services.svg-parser.url: environment variable SVG_PORT is not set (write ${SVG_PORT:-default} to give a default)",
        "services.svg-parser.timeout: expected a duration like '30s', got '30 seconds'",
        "services.svg-parser.routes[0].pathh: unknown field; did you mean `path`?",
        "services.svg-parser.routes[1].service: must be 'svg-parser' (the service this route is under), got 'svg'",
        "services.cmms-service.routes[2].methods[1]: unknown method 'FETCH'",
        "services.cmms-service.routes[3].name: duplicate route name 'svg-parser-1' (also services.svg-parser.routes[1])",
        "monitoring.logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'loud'",
    ]
    assert str(exc.value) == "\n".join(exc.value.errors)


def test_yaml_syntax_error_names_source_and_line():
    with pytest.raises(ConfigError) as exc:
        load_config_text("gateway:\n  port: [1\nservices: {}\n", source="gw.yaml")
    (err,) = exc.value.errors
    assert err.startswith("gw.yaml: invalid YAML: ")
    assert "line 3" in err


def test_duplicate_yaml_keys_are_errors():
    text = "services:\n  a:\n    url: http://a:1\n  a:\n    url: http://a:2\n    url: http://a:3\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert exc.value.errors == [
        "services.a: duplicate key (also on line 2; YAML would keep only the last one)",
        "services.a.url: duplicate key (also on line 5; YAML would keep only the last one)",
    ]


def test_duplicate_keys_come_with_the_other_errors():
    text = "gateway:\n  port: x\nservices:\n  a:\n    url: http://a:1\n    url: ftp://a\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert exc.value.errors == [
        "gateway.port: expected an integer, got 'x'",
        "services.a.url: duplicate key (also on line 5; YAML would keep only the last one)",
        "services.a.url: expected an http:// or https:// URL like 'http://host:8080', got 'ftp://a'",
    ]


def test_yaml_anchors_and_merge_keys_are_fine():
    text = """
x-defaults: &svc
  timeout: 10s
  retries: 0
services:
  a: {<<: *svc, url: "http://a:1"}
  b: {<<: *svc, url: "http://b:1", timeout: 5s}
"""
    doc = yaml.safe_load(text)
    del doc["x-defaults"]
    cfg, _ = load_config_data(doc)
    assert cfg.services["b"].timeout == 5 and cfg.services["a"].timeout == 10


@pytest.mark.parametrize("text,expected", [
    ("", "<string>: the config is empty; expected a mapping with 'gateway' and 'services'"),
    ("# only a comment\n", "<string>: the config is empty; expected a mapping with 'gateway' and 'services'"),
    ("- a\n- b\n", "<string>: expected a mapping at the top level, got a list"),
    ("services: {}\n42: x\n", "42: unknown field"),
])
def test_file_level_errors(text, expected):
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert exc.value.errors == [expected]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert exc.value.errors == [f"{tmp_path / 'nope.yaml'}: cannot read the config file: No such file or directory"]


def test_yaml_dates_are_explained():
    assert errors_of(edit(BASE, f"{SVC}.name", __import__("datetime").date(2024, 1, 1))) == [
        "services.svg-parser.name: expected a string or null, got a date (2024-01-01; quote it to make it a string)"
    ]


# -- every error at once, whatever the combination --------------------------------------

# Messages that depend on other fields being valid (struct-level and cross checks) are left
# out: those are reported only once the values they compare are themselves valid.
_DEPENDENT = ("ambiguous", "duplicate route name", "needs an 'auth'", "same port", "health_path",
              "must be 'svg-parser'", "must list at least one", "duplicate method", "'true' is not allowed",
              "nobody could", "is larger than", "PROXY protocol", "missing: set url", "either url",
              "true is not a breaker")
INDEPENDENT = [
    c for c in CASES
    if c[1] is not DELETE and not any(d in c[2] for d in _DEPENDENT)
    and c[0] not in ("gateway", "services", "gatway") and not c[0].endswith(".routes")
]


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(INDEPENDENT), min_size=1, max_size=12))
def test_errors_add_up(cases):
    chosen: list = []
    for c in cases:
        if not any(_overlaps(c[0], o[0]) for o in chosen):
            chosen.append(c)
    doc = BASE
    for path, value, _ in chosen:
        doc = edit(doc, path, value)
    assert sorted(errors_of(doc)) == sorted(c[2] for c in chosen)
