"""Tracing (issue 24): W3C traceparent/tracestate in and out, head sampling, the access
log's trace_id/span_id, and OTLP/HTTP export decoded by a receiver the test starts on
loopback."""

from __future__ import annotations

import asyncio
import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fastgw.config import ConfigError, load_config_text
from fastgw.middleware.tracing import Tracing, parse_traceparent
from fastgw.obs.metrics import LocalStore, Metrics
from fastgw.obs.otlp import SpanExporter, encode, trace_ids
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream, FakeUpstream
from tests.support.procs import admin, get
from tests.support.waiting import wait_for

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
_TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


# ---------------------------------------------------------------------- unit: parsing
@pytest.mark.parametrize("value, ok", [
    (f"00-{TID}-{PARENT}-01", True),
    (f"00-{TID}-{PARENT}-00", True),
    (f" 00-{TID}-{PARENT}-01 ", True),              # optional whitespace around the value
    (f"cc-{TID}-{PARENT}-01-what-the-future-holds", True),  # a later version may append fields
    (f"cc-{TID}-{PARENT}-01x", False),
    (f"00-{TID}-{PARENT}-01-extra", False),         # version 00 is exactly 55 characters
    (f"ff-{TID}-{PARENT}-01", False),               # version ff is invalid
    (f"00-{TID.upper()}-{PARENT}-01", False),       # upper-case hex
    (f"00-{'0' * 32}-{PARENT}-01", False),          # all-zero trace id
    (f"00-{TID}-{'0' * 16}-01", False),             # all-zero parent id
    (f"00-{TID[:-1]}-{PARENT}-01", False),
    (f"00_{TID}_{PARENT}_01", False),
    ("", False),
])
def test_parse_traceparent(value, ok):
    p = parse_traceparent(value.encode())
    assert (p is not None) == ok
    if ok:
        assert p[0] == int(TID, 16) and p[1] == int(PARENT, 16) and p[2] == int(value.strip()[53:55], 16)


def _mw(ratio: float, offer=None) -> Tracing:
    cfg, _ = load_config_text(f"""
services:
  a: {{url: "http://127.0.0.1:1", routes: [{{path: /x}}]}}
monitoring:
  tracing: {{sample_ratio: {ratio}}}
""")
    mw = Tracing(cfg, None, None)
    mw.offer = offer
    return mw


def _ctx(headers=(), trusted=True) -> Ctx:
    """A Ctx over a Request as the protocol leaves it (trace headers flagged by
    ``Request.build``, which classifies headers as the protocol does)."""
    c = Ctx(Request.build("GET", b"/", [(n.encode(), v.encode()) for n, v in headers]))
    c.trusted_peer = trusted
    return c


def _up(c) -> str:
    """The header lines the middleware added to the upstream request."""
    return c.up_lines.decode()


def _fwd(c) -> list:
    """The client headers still forwarded."""
    return c.fwd


def test_head_sampling_ratio_and_ids():
    got = []
    mw = _mw(0.25, got.append)
    tids = set()
    n = 4000
    for _ in range(n):
        c = _ctx()
        assert mw.request_filter(c) is None
        m = _TP.search(_up(c))
        assert m and (m.group(1), m.group(2)) == trace_ids(c.notes)
        assert (m.group(3) == "01") == ("tracing" in c.notes)
        tids.add(m.group(1))
    sampled = 0
    for _ in range(n):
        c = _ctx()
        mw.request_filter(c)
        sampled += "tracing" in c.notes
    assert 0.21 * n < sampled < 0.29 * n          # binomial(4000, .25): sd ~27
    assert len(tids) == n                          # new trace ids are random
    for ratio, expect in ((0.0, 0), (1.0, n)):
        mw = _mw(ratio, got.append)
        hits = 0
        for _ in range(n):
            c = _ctx()
            mw.request_filter(c)
            hits += "tracing" in c.notes
        assert hits == expect


def test_incoming_traceparent_trusted_untrusted_and_invalid():
    mw = _mw(0.0, lambda r: None)
    tp = f"00-{TID}-{PARENT}-01"
    # trusted and valid: same trace, a new parent (the gateway's span), sampled kept
    c = _ctx([("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE"), ("accept", "*/*")])
    mw.request_filter(c)
    m = _TP.search(_up(c))
    assert m.group(1) == TID and m.group(2) != PARENT and m.group(3) == "01"
    assert [n for n, _ in _fwd(c)] == [b"tracestate", b"accept"]   # old traceparent not forwarded
    assert c.notes["tracing"][2] == PARENT
    # the same header from an untrusted peer: a new trace, both headers dropped
    c = _ctx([("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE")], trusted=False)
    mw.request_filter(c)
    m = _TP.search(_up(c))
    assert m.group(1) != TID and m.group(3) == "00" and _fwd(c) == []
    # invalid, repeated, or a stray tracestate: replaced / dropped
    for hs in ([("traceparent", tp.upper())], [("traceparent", tp), ("Traceparent", tp)],
               [("tracestate", "a=b")], [("traceparent", tp), ("tracestate", "x" * 600)]):
        c = _ctx(hs)
        mw.request_filter(c)
        m = _TP.search(_up(c))
        if hs[-1][1] == "x" * 600:       # valid parent, oversized tracestate: parent kept, state dropped
            assert m.group(1) == TID and _fwd(c) == []
        else:
            assert m.group(1) != TID and _fwd(c) == [], hs
    # not sampled upstream: continued, not recorded
    c = _ctx([("traceparent", f"00-{TID}-{PARENT}-00")])
    mw.request_filter(c)
    assert _TP.search(_up(c)).group(3) == "00" and "tracing" not in c.notes


def test_config_errors_name_the_field():
    base = "services:\n  a: {url: 'http://127.0.0.1:1', routes: [{path: /x}]}\nmonitoring:\n  tracing: %s\n"
    for bad, msg in (("{sample_ratio: 2}", "monitoring.tracing.sample_ratio: must be between 0 and 1"),
                     ("{otlp_endpoint: 'grpc://c:4317'}", "monitoring.tracing.otlp_endpoint: expected an http"),
                     ("{sample_rate: 0.1}", "monitoring.tracing.sample_rate")):
        with pytest.raises(ConfigError) as e:
            load_config_text(base % bad)
        assert any(line.startswith(msg) for line in e.value.errors), e.value.errors


# ---------------------------------------------------------------------- unit: exporter
def test_exporter_queue_bound_and_failed_export_are_counted():
    cfg, _ = load_config_text("""
services:
  a: {url: "http://127.0.0.1:1", routes: [{path: /x}]}
monitoring:
  tracing: {otlp_endpoint: "http://127.0.0.1:1/v1/traces", max_queue: 3, export_timeout: 1s}
""")
    m = Metrics(LocalStore())
    ex = SpanExporter(cfg.monitoring.tracing, metrics=m)   # no loop: no task, driven by hand
    rec = ("%032x" % 1, "%016x" % 2, None, 0.0, 0.001, "GET", "/x", "http", 200, "r", "h", "127.0.0.1", "", "rid",
           None, None)
    for _ in range(5):
        ex.offer(rec)
    assert len(ex.queue) == 3 and ex.dropped == 2
    asyncio.run(ex.export_pending())                       # port 1: connection refused
    snap = m.store.snapshot()
    assert snap['fastgw_tracing_spans_total{result="dropped_queue_full"}'] == 2
    assert snap['fastgw_tracing_spans_total{result="dropped_export_failed"}'] == 3
    assert snap['fastgw_tracing_spans_total{result="exported"}'] == 0
    assert ex.queue == []
    body = encode([rec], "svc", lambda mono: int(mono * 1e9))
    span = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == (1).to_bytes(16, "big") and span.parent_span_id == b"" and span.end_time_unix_nano == 1_000_000


# ---------------------------------------------------------------------- live: gateway + OTLP receiver
class OtlpReceiver(FakeUpstream):
    """An OTLP/HTTP collector stand-in on the shared fake upstream: decodes every POST."""

    def __init__(self) -> None:
        super().__init__(handler=self._export)
        self.exports: list[tuple[str, str, ExportTraceServiceRequest]] = []
        self.url = f"http://{self.addr}/v1/traces"

    def _export(self, req, conn) -> bool:
        self.exports.append((req.target, req.header("content-type"), ExportTraceServiceRequest.FromString(req.body)))
        conn.respond(200, [("Content-Type", "application/x-protobuf")])
        return True

    def spans(self) -> list:
        return [(rs, s) for _p, _c, r in self.exports for rs in r.resource_spans
                for ss in rs.scope_spans for s in ss.spans]


CONFIG = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: [{TRUSTED}]
services:
  echo:
    url: "http://{UP}"
    routes:
      - {path: "/*", name: main, methods: ["GET"]}
monitoring:
  metrics_port: 0
  logging:
    level: warning
    access_log: {output: "{ACCESS_LOG}"}
  tracing: {sample_ratio: {RATIO}, otlp_endpoint: "{OTLP}", service_name: edge-gw, export_interval: 100ms}
"""


def _attrs(span) -> dict:
    return {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}


def test_live_traceparent_propagation_access_log_and_otlp_export():
    tp_in = f"00-{TID}-{PARENT}-01"
    with OtlpReceiver() as rx, EchoUpstream() as up:
        cfg = (CONFIG.replace("{UP}", up.addr).replace("{TRUSTED}", '"127.0.0.1/32"').replace("{RATIO}", "0")
               .replace("{OTLP}", rx.url))
        with Gateway(cfg) as gw:
            # 1. no traceparent, sampling 0: a new trace, not sampled, not exported
            st, _h, _b = gw.request("GET", "/a")
            assert st == 200
            m1 = _TP.fullmatch(up.requests[-1]["headers"]["traceparent"])
            assert m1 and m1.group(3) == "00"
            # 2. a sampled parent from a trusted peer: continued, a new parent id, exported
            st, _h, _b = gw.request("GET", "/b", headers={"traceparent": tp_in, "tracestate": "congo=t61rcWkgMzE"})
            h2 = up.requests[-1]["headers"]
            m2 = _TP.fullmatch(h2["traceparent"])
            assert m2.group(1) == TID and m2.group(2) != PARENT and m2.group(3) == "01"
            assert h2["tracestate"] == "congo=t61rcWkgMzE"
            # 3. an invalid one (upper case): replaced by a new trace, tracestate dropped
            gw.request("GET", "/c", headers={"traceparent": tp_in.upper(), "tracestate": "a=b"})
            h3 = up.requests[-1]["headers"]
            m3 = _TP.fullmatch(h3["traceparent"])
            assert m3.group(1) not in (TID, TID.upper()) and "tracestate" not in h3
            spans = wait_for(lambda: rx.spans() or None, timeout=5.0)
            assert spans, "no span reached the OTLP receiver"
            lines = wait_for(lambda: (ls := gw.access_lines()) and len(ls) >= 3 and ls, timeout=5.0)
            st, _, body = admin(gw, "/metrics")
            metrics = body.decode()
        path, ctype, _req = rx.exports[0]
        assert path == "/v1/traces" and ctype == "application/x-protobuf"
        assert len(spans) == 1                                   # only the sampled request
        rs, span = spans[0]
        res = {a.key: a.value.string_value for a in rs.resource.attributes}
        assert res["service.name"] == "edge-gw"
        assert span.trace_id.hex() == TID
        assert span.parent_span_id.hex() == PARENT              # the client's span
        assert span.span_id.hex() == m2.group(2)                # the upstream's parent
        assert span.trace_state == "congo=t61rcWkgMzE"
        assert span.name == "GET main" and span.kind == 2       # SPAN_KIND_SERVER
        assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 5e9
        a = _attrs(span)
        assert a["http.request.method"] == "GET" and a["url.path"] == "/b" and a["http.route"] == "main"
        assert a["http.response.status_code"] == 200 and a["fastgw.upstream"] == up.addr
        # the access log carries each request's trace and span ids
        by_path = {ln["path"]: ln for ln in lines}
        assert by_path["/a"]["trace_id"] == m1.group(1) and by_path["/a"]["span_id"] == m1.group(2)
        assert by_path["/b"]["trace_id"] == TID and by_path["/b"]["span_id"] == m2.group(2)
        assert by_path["/c"]["trace_id"] == m3.group(1)
        assert a["fastgw.request_id"] == by_path["/b"]["request_id"]
        assert 'fastgw_tracing_spans_total{result="exported"} 1' in metrics


def test_live_untrusted_peer_starts_a_new_trace_sampled_at_ratio_one():
    with OtlpReceiver() as rx, EchoUpstream() as up:
        cfg = (CONFIG.replace("{UP}", up.addr).replace("{TRUSTED}", "").replace("{RATIO}", "1.0")
               .replace("{OTLP}", rx.url))
        with Gateway(cfg) as gw:
            for _ in range(3):
                st, _h, _b = get(gw.port, "/u", headers={"traceparent": f"00-{TID}-{PARENT}-00"})
                assert st == 200
            sent = [_TP.fullmatch(r["headers"]["traceparent"]) for r in up.requests[-3:]]
            spans = wait_for(lambda: len(rx.spans()) >= 3 and rx.spans(), timeout=5.0)
        assert all(m.group(1) != TID and m.group(3) == "01" for m in sent)
        assert len({m.group(1) for m in sent}) == 3
        assert spans and {s.trace_id.hex() for _rs, s in spans} == {m.group(1) for m in sent}
        assert all(s.parent_span_id == b"" for _rs, s in spans)   # a root span: the client's parent ignored


def test_otlp_endpoint_without_opentelemetry_proto_is_refused(monkeypatch):
    import fastgw.config.tracing as tracing_cfg

    real = tracing_cfg.importlib.util.find_spec
    monkeypatch.setattr(tracing_cfg.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("opentelemetry") else real(name, *a))
    text = ("services:\n  a: {url: 'http://127.0.0.1:1', routes: [{path: /x}]}\n"
            "monitoring:\n  tracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n")
    with pytest.raises(ConfigError) as e:
        load_config_text(text)
    assert e.value.errors == ["monitoring.tracing.otlp_endpoint: OTLP export needs the opentelemetry-proto package: "
                              "pip install 'fastgw[otlp]'"]
    load_config_text(text.replace("{otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}", "{sample_ratio: 0.5}"))
