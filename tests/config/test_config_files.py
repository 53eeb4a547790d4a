"""Config files and outputs: the seed example, config/gateway.yaml, warnings, redaction,
JSON Schema, and the layer rule for fastgw/config."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import msgspec
import pytest

from fastgw.config import (
    NOT_ENFORCED,
    Config,
    ConfigError,
    Secret,
    json_schema,
    load_config,
    load_config_data,
    to_printable,
)

from tests import support
from tests.support.config import BASE, R0, edit

ROOT = pathlib.Path(support.ROOT)
SEED = ROOT / "tests" / "data" / "seed-example.yaml"
GATEWAY_YAML = ROOT / "config" / "gateway.yaml"
SECRET = "0123456789abcdef0123456789abcdef"

SEED_WARNINGS: list[str] = []   # (monitoring.circuit_breaker is enforced since #20)


def test_seed_copy_is_verbatim():
    plan = pathlib.Path("/work/shared/SEED-PLAN.md")
    if not plan.exists():
        pytest.skip("the shared seed plan is not on this machine")
    assert "```yaml\n" + SEED.read_text() + "```" in plan.read_text()


def test_seed_example_loads():
    cfg, warnings = load_config(SEED, env={"JWT_SECRET": SECRET})
    assert warnings == SEED_WARNINGS
    assert list(cfg.services) == ["svg-parser", "cmms-service", "database-infra"]
    svg = cfg.services["svg-parser"]
    assert (svg.name, svg.url, svg.health, svg.timeout, svg.retries) == (
        "SVG Parser", "http://svg-parser:8000", "http://svg-parser:8000/health", 30, 3)
    r = svg.routes[0]
    assert (r.name, r.path, r.service, r.methods, r.auth) == (
        "svg-parser-0", "/api/v1/svg/*", "svg-parser", ["GET", "POST", "PUT", "DELETE"], True)
    assert (r.rate_limit.requests_per_second, r.rate_limit.burst) == (100, 200)
    assert cfg.auth.jwt_secret == SECRET and isinstance(cfg.auth.jwt_secret, Secret)
    assert (cfg.auth.token_expiry, cfg.auth.refresh_token_expiry) == (86400, 7 * 86400)
    assert cfg.auth.roles == ["admin", "editor", "viewer", "maintenance", "analyst", "auditor", "security", "monitor"]
    assert {k: (v.requests_per_second, v.burst) for k, v in cfg.rate_limit.tiers.items()} == {
        "default": (100, 200), "authenticated": (50, 100), "admin": (200, 400)}
    mon = cfg.monitoring
    assert (mon.metrics_port, mon.health_check_interval) == (9090, 30)
    assert (mon.circuit_breaker.failure_threshold, mon.circuit_breaker.timeout) == (5, 60)
    assert (mon.logging.level, mon.logging.format, mon.logging.output) == ("info", "json", "stdout")


def test_seed_example_needs_jwt_secret():
    with pytest.raises(ConfigError) as exc:
        load_config(SEED, env={})
    assert exc.value.errors == [
        "auth.jwt_secret: environment variable JWT_SECRET is not set (write ${JWT_SECRET:-default} to give a default)"
    ]


def test_gateway_yaml_runs_locally_with_defaults():
    cfg, warnings = load_config(GATEWAY_YAML, env={})
    assert warnings == [w.replace("http://svg-parser:8000/health", "/health") for w in SEED_WARNINGS]
    assert (cfg.gateway.port, cfg.gateway.trusted_proxies, cfg.monitoring.metrics_port) == (8080, ["127.0.0.1/32"], 9090)
    assert {k: s.url for k, s in cfg.services.items()} == {
        "svg-parser": "http://127.0.0.1:8101",
        "cmms-service": "http://127.0.0.1:8102",
        "database-infra": "http://127.0.0.1:8103",
    }
    routes = {r.name: r for s in cfg.services.values() for r in s.routes}
    assert sorted(routes) == sorted([
        "svg-parser-0", "svg-parser-health", "cmms-service-0", "cmms-service-health",
        "database-infra-0", "database-infra-health",
    ])
    for svc in ("svg-parser", "cmms-service", "database-infra"):
        assert routes[f"{svc}-0"].auth and routes[f"{svc}-0"].rate_limit is not None
        assert not routes[f"{svc}-health"].auth and routes[f"{svc}-health"].methods == ["GET"]
    assert len(cfg.auth.roles) == 8 and len(cfg.auth.jwt_secret) >= 32


def test_gateway_yaml_env_overrides():
    env = {"FASTGW_PORT": "18080", "FASTGW_METRICS_PORT": "0", "SVG_PARSER_PORT": "18101", "CMMS_PORT": "18102",
           "DATABASE_INFRA_PORT": "18103", "JWT_SECRET": SECRET}
    cfg, _ = load_config(GATEWAY_YAML, env=env)
    assert (cfg.gateway.port, cfg.monitoring.metrics_port) == (18080, 0)
    assert [s.url for s in cfg.services.values()] == [f"http://127.0.0.1:181{i:02d}" for i in (1, 2, 3)]
    assert cfg.auth.jwt_secret == SECRET


# -- warnings --------------------------------------------------------------------------

def test_warning_table_rows_are_well_formed():
    assert len({row[0] for row in NOT_ENFORCED}) == len(NOT_ENFORCED)
    for spath, pred, msg in NOT_ENFORCED:
        assert callable(pred) and msg.startswith(("parsed but not enforced yet", "partly enforced"))


def test_config_reference_lists_exactly_the_warning_table():
    """docs/config.md's "Warnings" list is the table: a row that leaves the table leaves
    the page (a documented limitation the code no longer has is a defect too)."""
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "config.md").read_text()
    section = doc.split("**Warnings.**", 1)[1].split("\n## ", 1)[0]
    listed = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(listed) == len(NOT_ENFORCED), listed
    if not NOT_ENFORCED:
        assert "It is empty today" in section
    for spath, _pred, _msg in NOT_ENFORCED:
        assert spath.rsplit(".", 1)[-1] in section, spath


@pytest.mark.parametrize("path,value,warning", [
    ("services.svg-parser.retries", 2, None),
    ("services.svg-parser.retries", 0, None),
    ("services.svg-parser.health", "/health", None),
    (f"{R0}.transform", {"request": {"headers": {"set": {"X-A": "1"}}}}, None),  # enforced
    ("services.cmms-service", {"instances": [{"url": "http://a:1"}, {"url": "http://b:1"}]}, None),  # enforced (#20)
    ("services.cmms-service", {"instances": [{"url": "http://a:1"}]}, None),
    ("monitoring.circuit_breaker", {"failure_threshold": 3, "timeout": "10s"}, None),  # enforced
    ("monitoring.health_check_interval", "10s", None),
    ("auth", {"refresh_token_expiry": "7d"}, None),
    ("services.svg-parser.tls", {"verify": False},
     "services.svg-parser.tls: ignored: the service's URLs are http://, tls applies to https:// only"),
    ("rate_limit", {"authenticated": {"requests_per_second": 1, "burst": 1}},
     "rate_limit.authenticated: never applies: there is no 'auth' section"),
])
def test_warnings(path, value, warning):
    _, warnings = load_config_data(edit(BASE, path, value))
    assert warnings == ([warning] if warning else [])


# -- redaction and printing ------------------------------------------------------------

def test_printable_redacts_secrets():
    cfg, _ = load_config(GATEWAY_YAML, env={"JWT_SECRET": SECRET})
    doc = to_printable(cfg)
    assert doc["auth"]["jwt_secret"] == "***"
    assert SECRET not in json.dumps(doc)
    assert SECRET not in repr(cfg)
    assert doc["rate_limit"]["admin"] == {"requests_per_second": 200.0, "burst": 400, "key": "total", "backend": "memory"}
    assert "tiers" not in doc["rate_limit"]
    assert doc["gateway"]["timeout"] == 30.0 and doc["gateway"]["limits"]["max_body_size"] == 1 << 20


def test_printable_redacts_nested_secrets():
    doc = edit(BASE, "rate_limit", {"redis": {"url": "redis://:hunter2@127.0.0.1:6379"}})
    printed = to_printable(load_config_data(doc)[0])
    assert printed["rate_limit"]["redis"]["url"] == "***"
    assert "hunter2" not in json.dumps(printed)


def test_printed_config_loads_back_the_same():
    doc = edit(BASE, "rate_limit", {"default": {"requests_per_second": 5, "burst": 10}, "table_slots": 1024})
    doc = edit(doc, f"{R0}.roles", None)
    doc = edit(doc, "gateway.limits", {"max_body_size": "2m"})
    cfg, _ = load_config_data(doc)
    again, _ = load_config_data(json.loads(json.dumps(to_printable(cfg))))
    assert again == cfg


# -- JSON Schema -----------------------------------------------------------------------

def test_json_schema():
    schema = json_schema()
    defs = schema["$defs"]
    assert {"Config", "GatewayConfig", "ServiceConfig", "RouteConfig", "MonitoringConfig"} <= set(defs)
    assert "tiers" not in defs["RateLimitSection"]["properties"]
    assert defs["RateLimitSection"]["additionalProperties"] == {"$ref": "#/$defs/RateLimitRule"}
    assert defs["GatewayConfig"]["additionalProperties"] is False
    json.dumps(schema)


def test_msgspec_convert_still_works_for_plain_data():
    """Other code may build a Config with msgspec directly (no loader checks)."""
    from fastgw.config.base import dec_hook

    cfg = msgspec.convert({"services": {"a": {"url": "http://a:1", "timeout": "5s"}}}, Config, dec_hook=dec_hook)
    assert cfg.services["a"].timeout == 5


# -- layering --------------------------------------------------------------------------

CONFIG_DIR = ROOT / "fastgw" / "config"


@pytest.mark.parametrize("module", sorted(p.stem for p in CONFIG_DIR.glob("*.py")))
def test_config_module_imports_alone(module):
    name = "fastgw.config" if module == "__init__" else f"fastgw.config.{module}"
    subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, check=True)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_config_imports_only_lower_layers(path):
    allowed = ("fastgw.errors", "fastgw.clock", "fastgw.config")
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for n in names:
            if n == "fastgw" or n.startswith("fastgw."):
                assert n.startswith(allowed), f"{path.name} imports {n}"
