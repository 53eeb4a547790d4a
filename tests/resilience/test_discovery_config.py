"""``services.<name>.discovery``: config errors with their exact paths, and the parsed shape."""

from __future__ import annotations

import pytest

from fastgw.config import load_config_data
from fastgw.config.discovery import parse_resolver

from tests.support.config import BASE, DELETE, SVC, edit, errors_of


def _disc(value, *, keep_url=False):
    doc = edit(BASE, f"{SVC}.discovery", value)
    return doc if keep_url else edit(doc, f"{SVC}.url", DELETE)


CASES = [
    ({"type": "dns", "name": "svc.internal"},
     f"{SVC}.discovery.name: type dns needs host:port (e.g. 'svc.internal:8080'), got 'svc.internal'"),
    ({"type": "dns", "name": "svc.internal:0"},
     f"{SVC}.discovery.name: type dns needs host:port (e.g. 'svc.internal:8080'), got 'svc.internal:0'"),
    ({"type": "dns", "name": "bad name:80"}, f"{SVC}.discovery.name: invalid DNS name 'bad name'"),
    ({"type": "dns_srv", "name": "_http._tcp.svc:80"},
     f"{SVC}.discovery.name: type dns_srv takes a name without a port (the records carry it), "
     "got '_http._tcp.svc:80'"),
    ({"type": "consul", "name": "x:1"}, f"{SVC}.discovery.type: expected one of 'dns', 'dns_srv', got 'consul'"),
    ({"type": "dns", "name": "a:1", "min_ttl": "10s", "max_ttl": "5s"},
     f"{SVC}.discovery.min_ttl: is above max_ttl (10s > 5s)"),
    ({"type": "dns", "name": "a:1", "refresh": 0}, f"{SVC}.discovery.refresh: must be greater than 0, got 0s"),
    ({"type": "dns", "name": "a:1", "resolvers": ["dns.google"]},
     f"{SVC}.discovery.resolvers[0]: invalid resolver 'dns.google': expected an IP address (host:port), not a name"),
    ({"type": "dns", "name": "a:1", "resolvers": ["127.0.0.1:x"]},
     f"{SVC}.discovery.resolvers[0]: invalid resolver '127.0.0.1:x': the port must be a number"),
    ({"type": "dns", "name": "a:1", "scheme": "ftp"},
     f"{SVC}.discovery.scheme: expected one of 'http', 'https', got 'ftp'"),
    ({"type": "dns", "name": "a:1", "ttl": 5}, f"{SVC}.discovery.ttl: unknown field"),
]


@pytest.mark.parametrize("value,line", CASES, ids=[c[1].split(": ")[0] + ":" + str(i) for i, c in enumerate(CASES)])
def test_discovery_errors(value, line):
    errs = errors_of(_disc(value))
    assert line in errs, errs


def test_exactly_one_source():
    errs = errors_of(_disc({"type": "dns", "name": "a:1"}, keep_url=True))
    assert f"{SVC}.discovery: set exactly one of url, instances or discovery" in errs


def test_split_to_discovered_service_refused():
    doc = _disc({"type": "dns", "name": "a:1"})
    doc = edit(doc, "services.cmms-service.routes.0.split",
               {"to": [{"service": "svg-parser", "weight": 1}, {"service": "cmms-service", "weight": 1}]})
    errs = errors_of(doc)
    assert any("split.to[0].service: 'svg-parser' finds its instances by discovery" in e for e in errs), errs


def test_valid_discovery_parses():
    cfg, _ = load_config_data(_disc({"type": "dns_srv", "name": "_http._tcp.svc.internal", "refresh": "5s",
                                  "resolvers": ["127.0.0.1:5353", "[::1]:53"], "scheme": "https"}), env={})
    d = cfg.services["svg-parser"].discovery
    assert (d.type, d.refresh, d.scheme, d.host_port()) == ("dns_srv", 5.0, "https", ("_http._tcp.svc.internal", None))
    assert cfg.services["svg-parser"].upstreams() == []
    cfg, _ = load_config_data(_disc({"type": "dns", "name": "svc.internal:8080"}), env={})
    assert cfg.services["svg-parser"].discovery.host_port() == ("svc.internal", 8080)


def test_parse_resolver():
    assert parse_resolver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_resolver("::1") == ("::1", 53)
    assert parse_resolver("[::1]:5353") == ("::1", 5353)
