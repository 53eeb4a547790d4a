"""Deployment artefacts under deploy/ (issue 24): the Prometheus rules and their promtool
unit tests, the Grafana dashboard, the Kubernetes manifests (kubernetes-validate, offline,
for a named Kubernetes version), the staging compose file and the Dockerfile.

The metric names of every dashboard query and every rule are checked against the
``/metrics`` of a live gateway driven through the features the queries look at (routes,
upstream errors, auth, memory and Redis rate limits, JWKS), so a renamed metric breaks a
test, not a dashboard in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from fastgw.config import load_config_text
from fastgw.obs.prom import families
from tests.support.wire import closed_port
from tests.support.config import ECHO_HEAD
from tests.support.gateway import Gateway
from tests.support.procs import admin, get
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

from tests.support import ROOT  # noqa: E402
DEPLOY = os.path.join(ROOT, "deploy")
RULES = os.path.join(DEPLOY, "prometheus", "alerts.yml")
RULES_TEST = os.path.join(DEPLOY, "prometheus", "alerts_test.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "fastgw.json")
K8S = os.path.join(DEPLOY, "k8s")
COMPOSE = os.path.join(DEPLOY, "docker-compose.staging.yml")
K8S_VERSION = "1.33.0"   # the manifests are validated (strict) against this release's schemas
# series Prometheus itself adds to every target, allowed in rules next to fastgw's own
PROMETHEUS_SERIES = {"up"}
_METRIC = re.compile(r"\b(fastgw_[a-zA-Z0-9_]+|up)\b(?:\{([^}]*)\})?")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


def promtool() -> str:
    """promtool from PATH or /usr/bin (Debian package prometheus, scripts/install-deps)."""
    p = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
    assert p, "promtool not found: install the Debian package prometheus (scripts/install-deps)"
    return p


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def _rules() -> list[dict]:
    with open(RULES) as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def _dashboard() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def _dashboard_exprs() -> list[str]:
    out = []
    for p in _dashboard()["panels"]:
        out += [t["expr"] for t in p.get("targets", ())]
    return out


def _concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus receives it."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


# ---------------------------------------------------------------------- Prometheus rules
def test_rules_pass_promtool_check_and_unit_tests():
    pt = promtool()
    r = _run([pt, "check", "rules", RULES])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([pt, "test", "rules", RULES_TEST])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_rule_has_unit_tests_and_a_runbook():
    with open(RULES_TEST) as f:
        doc = yaml.safe_load(f)
    firing, quiet, exprs = set(), set(), ""
    for t in doc["tests"]:
        for case in t.get("alert_rule_test", ()):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        exprs += " ".join(c["expr"] for c in t.get("promql_expr_test", ())) + " "
    for r in _rules():
        if "alert" in r:
            name = r["alert"]
            assert name in firing, f"{name}: no promtool case where it fires"
            assert name in quiet, f"{name}: no promtool case where it stays quiet"
            ann = r["annotations"]
            assert ann.get("runbook") and ann.get("summary"), name
            anchor = ann["runbook_url"].split("#", 1)[1]
            assert anchor == name.lower()
            with open(os.path.join(ROOT, "docs", "deploy.md")) as f:
                assert f"### {name}" in f.read(), f"docs/deploy.md has no runbook section for {name}"
        else:
            assert r["record"] in exprs, f"recording rule {r['record']} has no promql_expr_test"


def test_rule_unit_tests_fail_when_a_threshold_changes(tmp_path):
    """The unit tests pin the thresholds: loosening one makes promtool fail (only the
    test groups of the changed alert are run)."""
    with open(RULES) as f:
        text = f.read()
    with open(RULES_TEST) as f:
        tests = yaml.safe_load(f)
    for alert, old, new in (("FastgwHighErrorRatio", "> 0.05", "> 0.5"),
                            ("FastgwWorkersRespawning", "[15m]) > 2", "[15m]) > 20")):
        assert text.count(old) == 1
        d = tmp_path / alert
        d.mkdir()
        (d / "alerts.yml").write_text(text.replace(old, new))
        groups = [t for t in tests["tests"] if any(c["alertname"] == alert for c in t.get("alert_rule_test", ()))]
        (d / "alerts_test.yml").write_text(yaml.safe_dump(dict(tests, tests=groups)))
        r = _run([promtool(), "test", "rules", str(d / "alerts_test.yml")])
        assert r.returncode != 0, f"promtool tests still pass with {old!r} -> {new!r}"


def test_prometheus_config_loads_the_rules():
    r = _run([promtool(), "check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout


# ---------------------------------------------------------------------- dashboard
def test_dashboard_structure_and_queries_parse(tmp_path):
    d = _dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = {p["title"].split(":")[0].lower() for p in d["panels"] if p["type"] == "row"}
    for want in ("traffic", "errors", "latency", "limits", "auth", "workers", "upstream health", "tracing",
                 "breakers, ejections, cache"):
        assert want in rows, f"dashboard has no {want!r} row"
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "instance"}
    for p in d["panels"]:
        if p["type"] in ("timeseries", "stat"):
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
    # promtool parses every query (as a recording rule: PromQL syntax and functions)
    exprs = _dashboard_exprs()
    assert len(exprs) >= 25
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": _concrete(e)} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dash_rules.yml"
    f.write_text(yaml.safe_dump(rules))
    r = _run([promtool(), "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr


LIVE = ECHO_HEAD + """      - {path: "/open/*", name: open, methods: ["GET"]}
      - path: "/limited/*"
        name: limited
        methods: ["GET"]
        rate_limit: {requests_per_second: 1, burst: 1}
      - path: "/shared/*"
        name: shared
        methods: ["GET"]
        rate_limit: {requests_per_second: 100, burst: 100, backend: redis}
      - {path: "/private/*", name: private, methods: ["GET"], auth: true}
      - {path: "/cached/*", name: cached, methods: ["GET"], cache: {default_ttl: 60s}}
  dead:
    url: "http://127.0.0.1:{DEAD}"
    connect_timeout: 1s
    routes:
      - {path: "/dead/*", name: dead, methods: ["GET"]}
auth:
  jwt_secret: "0123456789abcdef0123456789abcdef-test"
  jwks:
    - {url: "http://127.0.0.1:{DEAD}/jwks", name: idp, allow_http: true, timeout: 1s, min_refetch_interval: 1s}
rate_limit:
  redis: {url: "redis://127.0.0.1:{DEAD}/0", timeout: 50ms, on_error: open}
monitoring:
  metrics_port: 0
  tracing: {sample_ratio: 1, otlp_endpoint: "http://127.0.0.1:{DEAD}/v1/traces", export_interval: 200ms}
  circuit_breaker: {failure_threshold: 100, timeout: 30s}
  logging:
    level: error
    access_log: {enabled: false}
"""



def _live_series(text: str) -> dict[str, set[str]]:
    """sample name -> label names seen on it, from an exposition text."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if m:
            out.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_]\w*)="', m.group(2) or ""))
    return out


def _needed(exprs) -> dict[str, set[str]]:
    """metric name -> label names its selectors use, over ``exprs``."""
    out: dict[str, set[str]] = {}
    for e in exprs:
        for m in _METRIC.finditer(e):
            out.setdefault(m.group(1), set()).update(_LABEL.findall(m.group(2) or ""))
    return out


def test_dashboard_and_rules_name_metrics_a_live_gateway_exports():
    exprs = _dashboard_exprs() + [r["expr"] for r in _rules()]
    needed = _needed(exprs)
    assert "fastgw_http_requests_total" in needed and len(needed) >= 15
    dead = closed_port()
    with EchoUpstream() as up:
        cfg = LIVE.replace("{UP}", up.addr).replace("{DEAD}", str(dead))
        with Gateway(cfg, workers=1) as gw:
            port = gw.port
            get(port, "/open/a")
            get(port, "/nowhere")                       # 404, route "-"
            for _ in range(3):
                get(port, "/limited/a")                 # 429 after the burst
            get(port, "/shared/a")                      # Redis down: backend_error, fails open
            get(port, "/private/a")                     # 401
            get(port, "/private/a", headers={"Authorization": "Bearer x.y.z"})
            get(port, "/dead/a")                        # 502, upstream error
            get(port, "/cached/a")                      # a cache miss that stores
            get(port, "/cached/a")                      # a cache hit

            def scrape():
                st, _, body = admin(gw, "/metrics")
                have = _live_series(body.decode())
                missing = [n for n in needed if n not in have and n not in PROMETHEUS_SERIES]
                return None if missing else have
            have = wait_for(scrape, timeout=8.0, interval=0.3)
            if have is None:
                st, _, body = admin(gw, "/metrics")
                have = _live_series(body.decode())
    missing = sorted(n for n in needed if n not in have and n not in PROMETHEUS_SERIES)
    assert not missing, f"queries name metrics the live gateway does not export: {missing}"
    for name, labels in needed.items():
        if name in PROMETHEUS_SERIES:
            continue
        # target labels Prometheus adds at scrape time are allowed on every series
        unknown = labels - have[name] - {"instance", "job"}
        assert not unknown, f"{name}: queries use labels {sorted(unknown)} it does not have"
    # every name is documented (docs/operations.md is generated from this table)
    fams = families()
    for name in needed:
        if name in PROMETHEUS_SERIES:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in fams or base in fams, name


def test_recording_rules_used_by_the_dashboard_exist():
    used = {m for e in _dashboard_exprs() for m in re.findall(r"\bfastgw:[a-zA-Z0-9_:]+", e)}
    assert used and used <= _recorded()


# ---------------------------------------------------------------------- Kubernetes
def _manifests() -> list[tuple[str, dict]]:
    out = []
    for fn in sorted(os.listdir(K8S)):
        if fn.endswith(".yaml") and fn != "kustomization.yaml":
            with open(os.path.join(K8S, fn)) as f:
                out += [(fn, d) for d in yaml.safe_load_all(f) if d]
    return out


def test_k8s_manifests_validate_offline():
    from kubernetes_validate import utils as kv

    docs = _manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
            "HorizontalPodAutoscaler"} <= kinds
    for fn, d in docs:
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except Exception as e:  # ValidationError / SchemaNotFoundError: say which file
            pytest.fail(f"deploy/k8s/{fn}: {type(e).__name__}: {e}")
    # and the validator refuses a broken one (so the loop above can fail)
    bad = json.loads(json.dumps(next(d for _, d in docs if d["kind"] == "Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(Exception):
        kv.validate(bad, K8S_VERSION, strict=True)
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f)["resources"])
    assert listed == {fn for fn, _ in docs} - {"secret.example.yaml"}


def _seconds(d) -> float:
    return float(str(d).rstrip("s"))


def test_k8s_deployment_matches_the_gateway_config():
    docs = {d["kind"]: d for _, d in _manifests()}
    cm_text = docs["ConfigMap"]["data"]["gateway.yaml"]
    env = {"JWT_SECRET": "k" * 40, "REDIS_URL": "redis://r:6379/0", "POD_IP": "10.1.2.3", "ADMIN_TOKEN": "t" * 32}
    cfg, _ = load_config_text(cm_text, source="configmap", env=env)
    assert cfg.monitoring.metrics_host == "10.1.2.3"         # the pod's address, not loopback
    raw = yaml.safe_load(cm_text)
    assert raw["monitoring"]["metrics_host"] == "${POD_IP}"
    assert cfg.monitoring.admin.host == "127.0.0.1"           # the admin API stays on loopback
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == cfg.gateway.port and ports["admin"] == cfg.monitoring.metrics_port
    assert c["readinessProbe"]["httpGet"] == {"path": cfg.gateway.health_path, "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    delay, timeout = float(cfg.gateway.drain.delay), float(cfg.gateway.drain.timeout)
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(int(delay))]
    assert spec["terminationGracePeriodSeconds"] == 2 * delay + timeout + 5
    envs = {e["name"]: e.get("valueFrom", {}) for e in c["env"]}
    assert envs["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    secret = docs["Secret"]
    for name in ("JWT_SECRET", "REDIS_URL", "ADMIN_TOKEN"):
        ref = envs[name]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
        assert "${%s}" % name in cm_text
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount and c["args"][1] == mount["mountPath"] + "/gateway.yaml"
    assert spec["securityContext"]["runAsNonRoot"] is True
    labels = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    for kind in ("Service", "PodDisruptionBudget"):
        sel = docs[kind]["spec"]["selector"]
        assert sel.get("matchLabels", sel) == labels, kind
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


# ---------------------------------------------------------------------- compose, Dockerfile
def _module_file(mod: str) -> bool:
    base = os.path.join(ROOT, *mod.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py"))


def test_compose_file_parses_and_its_commands_exist():
    with open(COMPOSE) as f:
        doc = yaml.safe_load(f)
    services = doc["services"]
    assert {"gateway", "svg-parser", "cmms-service", "database-infra", "redis", "prometheus", "grafana"} <= set(services)
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        scripts = re.search(r"\[project\.scripts\]\n((?:.+\n)+)", f.read()).group(1)
    compose_dir = os.path.dirname(COMPOSE)
    for name, svc in services.items():
        for dep in svc.get("depends_on", ()):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", ()):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(compose_dir, src)), f"{name}: mounted {src} is not in the repo"
        if svc.get("image") == "fastgw:staging":
            assert os.path.isfile(os.path.join(compose_dir, svc["build"]["context"], svc["build"]["dockerfile"]))
            argv = list(svc.get("entrypoint") or ["fastgw"]) + list(svc.get("command", ()))
            if argv[0] == "fastgw":
                assert re.search(r"^fastgw\s*=", scripts, re.M)
                if "-c" in argv:
                    path = argv[argv.index("-c") + 1]
                    src = next(v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == path)
                    with open(os.path.join(compose_dir, src)) as f:
                        load_config_text(f.read(), source=src, env={"JWT_SECRET": "s" * 40})
            else:
                assert argv[:2] == ["python", "-m"] and _module_file(argv[2]), f"{name}: {argv}"
                if argv[2] == "fastgw.demo.echo":
                    r = _run([sys.executable, "-m", argv[2], "--help"], cwd=ROOT)
                    for opt in argv[3::2]:
                        assert opt in r.stdout, f"{name}: {opt} is not an option of {argv[2]}"
    # the gateway's config names the demo upstreams by their compose service names
    with open(os.path.join(compose_dir, "staging", "gateway.yaml")) as f:
        text = f.read()
    for up in ("svg-parser", "cmms-service", "database-infra"):
        port = services[up]["command"][services[up]["command"].index("--port") + 1]
        assert f"http://{up}:{port}" in text
    prom = services["prometheus"]
    assert any(v.endswith("/etc/prometheus/alerts.yml:ro") for v in prom["volumes"])


def test_dockerfile_shape_and_steps_script():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build" and "slim" in text.split("PYTHON_IMAGE=")[1].split()[0]
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001", final, re.M)
    assert 'ENTRYPOINT ["fastgw"]' in final               # exec form: fastgw is PID 1
    assert re.search(r"^HEALTHCHECK .*\n?.*livez", final, re.M)
    assert "COPY --from=build /opt/fastgw /opt/fastgw" in final
    # the script that runs these steps without a Docker daemon parses this file
    with open(os.path.join(ROOT, "scripts", "docker-steps")) as f:
        script = f.read()
    assert "Dockerfile" in script
    with tempfile.TemporaryDirectory() as tmp:
        r = _run([sys.executable, os.path.join(ROOT, "scripts", "docker-steps"), "--plan"], cwd=tmp)
        assert r.returncode == 0, r.stderr
        plan = r.stdout
    assert "pip install '.[redis,otlp]'" in plan and "fastgw --check -c config/gateway.yaml" in plan
    assert "livez" in plan


def test_k6_script_runs_the_bench_small50_workload():
    from bench.scenarios import SCENARIOS

    sc = next(s for s in SCENARIOS if s.name == "small-50")
    with open(os.path.join(ROOT, "bench", "k6", "small50.js")) as f:
        js = f.read()
    assert f"vus: {sc.connections}," in js
    assert "${TARGET}" + sc.path in js.replace("`", "")
    assert f"res.body.length === {sc.expect_bytes}" in js
