"""Config values: durations, sizes, ${VAR} substitution, defaults and normalisation."""

from __future__ import annotations

import math

import pytest

from fastgw.config import (
    ConfigError,
    Duration,
    GatewayConfig,
    LoggingConfig,
    MonitoringConfig,
    PoolConfig,
    Size,
    UpstreamTlsConfig,
    load_config_data,
    load_config_text,
)
from fastgw.config.base import parse_duration, parse_size

from tests.support.config import BASE, P0, R0, edit, errors_of


# -- durations and sizes ---------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800), ("1h30m", 5400),
    ("1.5s", 1.5), ("0s", 0), (" 30s ", 30), ("30", 30), (30, 30), (0.05, 0.05), ("2m30s", 150),
])
def test_durations(text, seconds):
    d = parse_duration(text)
    assert isinstance(d, Duration) and math.isclose(d, seconds)


@pytest.mark.parametrize("text", ["30 seconds", "-1s", "nans", "inf", "s", "", "1x", "30s5", "1e3s", True, None, -1, float("nan")])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text,size", [
    ("512", 512), (512, 512), ("8k", 8192), ("16kb", 16384), ("1m", 1 << 20), ("1MB", 1 << 20), ("2g", 2 << 30),
    ("10 k", 10240), ("0", 0),
])
def test_sizes(text, size):
    s = parse_size(text)
    assert isinstance(s, Size) and s == size


@pytest.mark.parametrize("text", ["1.5m", "-1", -1, "k", "1t", "", True, 1.0])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_durations_and_sizes_in_the_file():
    cfg, _ = load_config_text(
        "gateway: {timeout: 1500ms, limits: {max_body_size: 10m}}\nservices: {}\n"
    )
    assert cfg.gateway.timeout == 1.5 and isinstance(cfg.gateway.timeout, Duration)
    assert cfg.gateway.limits.max_body_size == 10 << 20 and isinstance(cfg.gateway.limits.max_body_size, Size)


# -- ${VAR} substitution ---------------------------------------------------------------

def load_env(text: str, env: dict):
    return load_config_text(text, env=env)[0]


SUBST = """
gateway:
  port: ${PORT:-8080}
  host: "${HOST:-127.0.0.1}"
  timeout: ${TIMEOUT:-30s}
  workers: ${WORKERS:-}
  proxy_protocol: {enabled: "${PP:-false}", trusted_cidrs: ["${CIDR:-10.0.0.0/8}"]}  # quoted in flow style
services:
  svg-parser:
    url: "http://${UP_HOST:-127.0.0.1}:${UP_PORT:-8101}/base"
    tls: {ca_file: "${CA_FILE:-}"}
"""


def test_defaults_when_unset():
    cfg = load_env(SUBST, {})
    gw = cfg.gateway
    assert (gw.port, gw.host, gw.timeout, gw.workers) == (8080, "127.0.0.1", 30, None)
    assert gw.proxy_protocol.enabled is False and gw.proxy_protocol.trusted_cidrs == ["10.0.0.0/8"]
    assert cfg.services["svg-parser"].url == "http://127.0.0.1:8101/base"
    assert cfg.services["svg-parser"].tls.ca_file is None  # empty substitution = unset


def test_values_from_env_take_their_field_type():
    env = {"PORT": "9000", "HOST": "0.0.0.0", "TIMEOUT": "5", "WORKERS": "4", "PP": "true",
           "UP_PORT": "9101", "CA_FILE": "/etc/ca.pem"}
    cfg = load_env(SUBST, env)
    gw = cfg.gateway
    assert (gw.port, gw.host, gw.timeout, gw.workers, gw.proxy_protocol.enabled) == (9000, "0.0.0.0", 5, 4, True)
    assert type(gw.port) is int and type(gw.host) is str
    assert cfg.services["svg-parser"].url == "http://127.0.0.1:9101/base"
    assert cfg.services["svg-parser"].tls.ca_file == "/etc/ca.pem"


def test_empty_var_takes_the_default_like_a_shell():
    assert load_env(SUBST, {"PORT": ""}).gateway.port == 8080


def test_bad_value_from_env_is_reported_at_its_path():
    with pytest.raises(ConfigError) as exc:
        load_config_text(SUBST, env={"PORT": "eighty", "PP": "maybe"})
    assert exc.value.errors == [
        "gateway.port: expected an integer, got 'eighty'",
        "gateway.proxy_protocol.enabled: expected true or false, got 'maybe'",
    ]


@pytest.mark.parametrize("value,expected", [
    ("${NOPE}", "gateway.host: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"),
    ("${}", "gateway.host: invalid variable reference '${}': expected ${NAME} or ${NAME:-default}"),
    ("${1X}", "gateway.host: invalid variable reference '${1X}': expected ${NAME} or ${NAME:-default}"),
    ("${X:default}", "gateway.host: invalid variable reference '${X:default}': expected ${NAME} or ${NAME:-default}"),
    ("a${X", "gateway.host: unterminated variable reference: '${' without a closing '}'"),
])
def test_substitution_errors(value, expected):
    assert errors_of(edit(BASE, "gateway.host", value)) == [expected]


def test_every_unset_variable_is_reported():
    doc = edit(edit(BASE, "gateway.host", "${A}-${B}"), "services.svg-parser.url", "http://${C}:1")
    assert sorted(e.split(": ", 1)[1].split(" (")[0] for e in errors_of(doc)) == [
        "environment variable A is not set", "environment variable B is not set", "environment variable C is not set"
    ]


def test_escapes_and_literal_dollars():
    doc = edit(BASE, "services.svg-parser.name", "$${HOME} costs $5 and $$ ${X:-a:-b}")
    cfg, _ = load_config_data(doc, env={"HOME": "/root"})
    assert cfg.services["svg-parser"].name == "${HOME} costs $5 and $$ a:-b"


def test_keys_are_not_substituted():
    doc = {"services": {"${X}": {"url": "http://a:1"}}}
    assert errors_of(doc, env={"X": "svc"})[0].startswith("services.${X}: invalid name")


def test_secret_value_never_in_messages():
    doc = edit(BASE, "auth", {"jwt_secret": "${S}"})
    errs = errors_of(doc, env={"S": "short-secret-xyz"})
    assert errs and all("short-secret-xyz" not in e for e in errs)
    assert [e.split(":")[0] for e in errs] == ["auth.jwt_secret"]  # too short for HS256


# -- defaults and normalisation --------------------------------------------------------

def test_defaults():
    cfg, warnings = load_config_data({"services": {"a": {"url": "http://a:1", "routes": [{"path": "/a"}]}}})
    assert warnings == []
    gw = cfg.gateway
    assert gw == GatewayConfig()
    assert (gw.host, gw.port, gw.timeout, gw.max_connections, gw.workers) == ("0.0.0.0", 8080, 30, 1000, None)
    assert (gw.trusted_proxies, gw.health_path, gw.tls, gw.request_id_header, gw.server_header) == (
        [], "/healthz", None, "X-Request-ID", None)
    lim = gw.limits
    assert (lim.max_request_line, lim.max_header_size, lim.max_headers_size, lim.max_headers, lim.max_body_size) == (
        8192, 8192, 32768, 100, 1 << 20)
    to = gw.timeouts
    assert (to.request_header, to.request_body, to.keepalive, to.send) == (60, 60, 75, 60)
    assert (gw.drain.delay, gw.drain.timeout) == (5, 30)
    assert (gw.proxy_protocol.enabled, gw.proxy_protocol.trusted_cidrs) == (False, None)
    assert gw.proxy_protocol.effective_cidrs(["10.0.0.0/8"]) == ["10.0.0.0/8"]

    svc = cfg.services["a"]
    assert (svc.name, svc.instances, svc.health, svc.timeout, svc.connect_timeout, svc.read_timeout) == (
        None, [], None, None, 5, 60)
    assert (svc.retries, svc.preserve_host, svc.rate_limit) == (0, True, None)
    assert svc.pool == PoolConfig() and (svc.pool.max_idle, svc.pool.max_connections, svc.pool.idle_timeout,
                                         svc.pool.max_waiters, svc.pool.wait_timeout) == (64, 1024, 60, None, 5)
    assert svc.tls == UpstreamTlsConfig() and (svc.tls.verify, svc.tls.ca_file, svc.tls.server_name) == (True, None, None)
    assert [(i.url, i.weight) for i in svc.upstreams()] == [("http://a:1", 1)]

    r = svc.routes[0]
    assert (r.name, r.service, r.methods, r.host, r.match, r.auth, r.roles) == ("a-0", "a", ["GET", "HEAD"], None, None, False, None)
    assert (r.rate_limit, r.max_body_size, r.allow_encoded_slash, r.transform, r.timeout) == (None, None, False, None, None)
    assert (r.cors, r.security_headers, r.ip_filter, r.validate) == (None, None, None, None)

    mon = cfg.monitoring
    assert mon == MonitoringConfig()
    assert (mon.metrics_port, mon.metrics_host, mon.health_check_interval, mon.circuit_breaker) == (9090, "127.0.0.1", 30, None)
    log = mon.logging
    assert log == LoggingConfig() and (log.level, log.format, log.output) == ("info", "json", "stderr")
    assert (log.access_log.enabled, log.access_log.output, log.access_log.log_health) == (True, "stdout", False)
    assert mon.admin is None
    assert (log.audit.enabled, log.audit.output) == (True, "stdout")
    assert (cfg.auth, cfg.rate_limit, cfg.cors, cfg.security_headers, cfg.ip_filter) == (None,) * 5


def test_empty_sections_are_defaults():
    cfg, _ = load_config_text("gateway:\nmonitoring:\nservices:\n")
    assert cfg.gateway == GatewayConfig() and cfg.monitoring == MonitoringConfig() and cfg.services == {}


def test_normalisation():
    doc = edit(BASE, R0, {
        "path": "/api/v1/svg/{id}/*", "name": "svg-items", "methods": ["get", "Post"], "host": "API.Example.com",
        "match": {"headers": {"X-Tenant": "a"}, "query": {"v": "2"}},
    })
    doc = edit(doc, "monitoring.logging.level", "DEBUG")
    cfg, _ = load_config_data(doc)
    r = cfg.services["svg-parser"].routes[0]
    assert (r.name, r.service, r.methods, r.host) == ("svg-items", "svg-parser", ["GET", "POST"], "api.example.com")
    assert r.match.headers == {"x-tenant": "a"} and r.match.query == {"v": "2"}
    assert cfg.monitoring.logging.level == "debug"
    assert [r.name for r in cfg.services["cmms-service"].routes] == ["cmms-service-0", "cmms-service-1", "cmms-service-2"]


def test_roles_imply_auth_and_role_maps():
    doc = edit(BASE, "auth", {"jwt_secret": "0123456789abcdef0123456789abcdef", "roles": ["admin", "viewer"]})
    doc = edit(doc, f"{R0}.methods", ["GET", "POST", "DELETE"])
    doc = edit(doc, f"{R0}.roles", {"get": ["viewer", "admin"], "*": ["admin"]})
    cfg, _ = load_config_data(doc)
    r = cfg.services["svg-parser"].routes[0]
    assert r.auth is True and r.roles == {"GET": ["viewer", "admin"], "*": ["admin"]}
    assert r.allowed_roles("GET") == r.allowed_roles("HEAD") == ["viewer", "admin"]
    assert r.allowed_roles("DELETE") == ["admin"]


def test_route_overrides_false_and_objects():
    doc = edit(BASE, f"{R0}.cors", False)
    doc = edit(doc, f"{R0}.ip_filter", {"allow": ["10.0.0.0/8"]})
    r = load_config_data(doc)[0].services["svg-parser"].routes[0]
    assert r.cors is False and r.ip_filter.allow == ["10.0.0.0/8"]


def test_instances_and_https():
    doc = edit(BASE, "services.svg-parser", {
        "instances": [{"url": "https://a:443", "weight": 3}, {"url": "https://b:443", "weight": 0}],
        "tls": {"server_name": "svg.internal", "ca_file": "/ca.pem"},
    })
    svc = load_config_data(doc)[0].services["svg-parser"]
    assert svc.url is None and [(i.url, i.weight) for i in svc.upstreams()] == [("https://a:443", 3), ("https://b:443", 0)]
    bad = edit(doc, "services.svg-parser.instances.1.url", "http://b:80")
    assert errors_of(bad) == ["services.svg-parser.instances: mixes http:// and https:// instances; use one scheme per service"]
    zero = edit(doc, "services.svg-parser.instances.0.weight", 0)
    assert errors_of(zero) == ["services.svg-parser.instances: every instance has weight 0: nothing could receive traffic"]


def test_rate_limit_section():
    doc = edit(BASE, "auth", {"jwt_secret": "0123456789abcdef0123456789abcdef", "roles": ["admin"]})
    doc = edit(doc, "rate_limit", {
        "default": {"requests_per_second": 100, "burst": 200},
        "authenticated": {"requests_per_second": 50, "burst": 100},
        "admin": {"requests_per_second": 200, "burst": 400},
        "exempt_roles": ["admin"], "dry_run": True, "headers": {"legacy": True},
        "redis": {"url": "redis://:pw@127.0.0.1:6379/0", "on_error": "closed"}, "table_slots": 1024,
    })
    rl = load_config_data(doc)[0].rate_limit
    assert sorted(rl.tiers) == ["admin", "authenticated", "default"]
    assert (rl.tiers["admin"].requests_per_second, rl.tiers["admin"].burst) == (200, 400)
    assert rl.exempt_roles == ["admin"] and rl.dry_run is True and rl.table_slots == 1024
    assert (rl.headers.ietf, rl.headers.legacy, rl.headers.on_allowed) == (True, True, False)
    assert (rl.redis.url, rl.redis.timeout, rl.redis.on_error) == ("redis://:pw@127.0.0.1:6379/0", 0.05, "closed")


def test_metrics_port_zero_and_separate_hosts_are_fine():
    load_config_data(edit(edit(BASE, "monitoring.metrics_port", 0), "gateway.port", 0))
    doc = edit(edit(BASE, "gateway.host", "10.0.0.1"), "monitoring.metrics_port", 8080)
    load_config_data(doc)


def test_route_errors_use_paths_with_names():
    doc = edit(BASE, "services.cmms-service.routes.2.methods", ["FETCH"])
    assert errors_of(doc) == ["services.cmms-service.routes[2].methods[0]: unknown method 'FETCH'"]
    assert P0 == "services.svg-parser.routes[0]"


def test_host_star_means_any_host():
    r = load_config_data(edit(BASE, f"{R0}.host", "*"))[0].services["svg-parser"].routes[0]
    assert r.host is None
    r = load_config_data(edit(BASE, f"{R0}.host", "*.Example.COM."))[0].services["svg-parser"].routes[0]
    assert r.host == "*.example.com"


def test_head_comes_with_get_when_checking_ambiguity():
    doc = edit(BASE, "services.cmms-service.routes.0.methods", ["GET"])
    doc = edit(doc, "services.cmms-service.routes.1", {"path": "/api/v1/cmms/a", "methods": ["HEAD"]})
    assert errors_of(doc) == [
        "services.cmms-service.routes[1].path: ambiguous: services.cmms-service.routes[0] has the same host, "
        "path and match conditions and also allows HEAD"
    ]


def test_sni_name_is_a_plain_host():
    doc = edit(BASE, "services.svg-parser", {"url": "https://a:443", "tls": {"server_name": "*.a.com"}})
    assert errors_of(doc) == ["services.svg-parser.tls.server_name: invalid host name '*.a.com': no wildcard here"]


def test_text_and_bytes_and_source():
    text = "services:\n  a: {url: 'http://a:1'}\n"
    assert load_config_text(text)[0] == load_config_text(text.encode())[0]
    with pytest.raises(ConfigError) as exc:
        load_config_text("services: 5\n", source="x.yaml")
    assert exc.value.source == "x.yaml" and exc.value.errors == ["services: expected an object, got 5"]


def test_post_init_messages_land_on_their_field():
    import msgspec.inspect as mi

    from fastgw.config.base import Base
    from fastgw.config.walk import INVALID, Walker

    class S(Base):
        a: int = 0
        b: int = 0

        def __post_init__(self):
            if self.a > self.b:
                raise ValueError("a: must not exceed b")
            if self.a < 0:
                raise ValueError("a and b must be positive")

    w = Walker()
    assert w.convert(mi.type_info(S), {"a": 2, "b": 1}, ("x",), "x") is INVALID
    assert w.convert(mi.type_info(S), {"a": -2}, ("y",), "y") is INVALID
    assert w.errors == [(("x", "a"), "must not exceed b"), (("y",), "a and b must be positive")]
