"""The access log line and its buffer, in process: the line is byte-for-byte what the
previous implementation (a dict through ``orjson.dumps``, one line per request) wrote,
records and plain lines keep their order, and the buffer flushes whole lines."""

from __future__ import annotations

import os
from types import SimpleNamespace

import orjson
import pytest

from fastgw.middleware import access_log
from fastgw.obs.logbuf import PIPE_BUF, LogBuffer
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx

WALL, NOW = 1795712266.9502966, 1000.0


class _Chain:
    log_notes = True   # a middleware of the route leaves notes for the log (tracing here)


class _Route:
    name, service = "api", "main"
    chain = _Chain()


class _Err:
    def __init__(self, kind):
        self.kind = kind


def _reference_line(ctx, error, ts, now) -> bytes:
    """The line as the original dict + orjson implementation built it."""
    route = ctx.route
    flags = ctx.flags
    if error is not None and error.kind not in flags:
        flags = flags + [error.kind]
    req = ctx.request
    ua = req.user_agent
    rec = {
        "ts": ts, "request_id": ctx.request_id, "client_ip": ctx.client_ip, "method": req.method,
        "authority": req.host, "path": req.path, "status": ctx.status,
        "bytes_received": req.bytes_received, "bytes_sent": ctx.bytes_sent,
        "duration_s": now - ctx.start, "upstream": ctx.upstream,
        "upstream_status": ctx.upstream_status or None, "upstream_duration_s": ctx.upstream_duration,
        "route": route.name if route is not None else None, "user": ctx.user,
        "user_agent": ua.decode("latin-1") if ua else None, "response_flags": flags,
    }
    tp = ctx.notes.get("trace")  # the tracing middleware's (upstream line, trace id, span id)
    if tp is not None:
        rec["trace_id"], rec["span_id"] = tp[1], tp[2]
    return orjson.dumps(rec)


_REQUEST_FIELDS = {"method": "method", "path": "path", "host": "host", "bytes_received": "bytes_received",
                   "ua": "user_agent"}


def _ctx(**kw) -> Ctx:
    ctx = Ctx(Request())
    req = ctx.request
    req.method, req.path, req.host, req.bytes_received, req.user_agent = "GET", "/x", "example.org:8080", 12, b"wrk"
    ctx.route, ctx.status = _Route(), 200
    ctx.client_ip, ctx.request_id, ctx.bytes_sent = "10.0.0.1", "rid-1", 197
    ctx.upstream, ctx.upstream_status, ctx.upstream_duration = "127.0.0.1:9", 200, 0.0004
    ctx.start = NOW - 0.00071
    for k, v in kw.items():
        if k in _REQUEST_FIELDS:
            setattr(req, _REQUEST_FIELDS[k], v)
        else:
            setattr(ctx, k, v)
    return ctx


CASES = [
    dict(),
    dict(route=None, upstream="", upstream_status=0, upstream_duration=None, ua=None, status=404),
    dict(flags=["client_abort"], status=499, user="alice", ua=b"caf\xe9 \"quoted\" \\ \x01"),
    dict(path='/a"b', host="h\u00e9", request_id="", start=NOW - 12.5, upstream_duration=1e-05),
    dict(user=None, ua=b"", bytes_sent=0, upstream_duration=2.5),
]


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setattr(access_log, "wall", lambda: WALL)
    monkeypatch.setattr(access_log, "monotonic", lambda: NOW)


def _lines(path) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


@pytest.mark.parametrize("error", [None, _Err("upstream_timeout"), _Err("client_abort")])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_line_is_byte_identical_to_the_dict_encoding(tmp_path, clock, case, error):
    out = tmp_path / "access.log"
    buf = LogBuffer(str(out))
    al = access_log.AccessLog(None, None, buf)
    expected = []
    for trace in (None, "4bf92f3577b34da6a3ce929d0e0e4736"):
        ctx = _ctx(**CASES[case])
        if trace is not None:
            ctx.notes["trace"] = (b"traceparent: 00-%s-00f067aa0ba902b7-01\r\n" % trace.encode(), trace,
                                  "00f067aa0ba902b7")
        al.logging(ctx, error)
        expected.append(_reference_line(ctx, error, WALL, NOW))
    buf.close()
    assert _lines(out) == expected
    for line in _lines(out):
        assert list(orjson.loads(line))[:17] == [
            "ts", "request_id", "client_ip", "method", "authority", "path", "status", "bytes_received",
            "bytes_sent", "duration_s", "upstream", "upstream_status", "upstream_duration_s", "route",
            "user", "user_agent", "response_flags"]


def test_other_middlewares_notes_leave_the_line_as_it_is(tmp_path, clock):
    """A route whose middlewares leave no note for the log (``Chain.log_notes`` false: the
    policy chain's CORS and rate-limit notes) writes the same line as one without notes."""
    class _Plain:
        log_notes = False

    out = tmp_path / "access.log"
    buf = LogBuffer(str(out))
    al = access_log.AccessLog(None, None, buf)
    ctx = _ctx()
    ctx.route = SimpleNamespace(name="api", service="main", chain=_Plain())
    ctx.notes.update({"cors": object(), "ratelimit_ip": True})
    al.logging(ctx, None)
    plain = _ctx()
    plain.route = ctx.route
    buf.close()
    assert _lines(out) == [_reference_line(plain, None, WALL, NOW)]


def test_flags_are_captured_at_logging_time(tmp_path, clock):
    out = tmp_path / "access.log"
    buf = LogBuffer(str(out))
    al = access_log.AccessLog(None, None, buf)
    empty, some = _ctx(), _ctx(flags=["retried"])
    al.logging(empty, None)
    al.logging(some, None)
    empty.flags.append("late")  # a record is encoded at flush, after the request is gone
    some.flags.append("late")
    buf.flush()
    assert [orjson.loads(x)["response_flags"] for x in _lines(out)] == [[], ["retried"]]


def test_records_and_lines_keep_their_order_and_flush_at_max_recs(tmp_path, clock):
    out = tmp_path / "mixed.log"
    buf = LogBuffer(str(out), max_recs=3)
    al = access_log.AccessLog(None, None, buf)
    al.logging(_ctx(path="/1"), None)
    buf.write(b'{"line":2}')
    al.logging(_ctx(path="/3"), None)
    al.logging(_ctx(path="/4"), None)
    assert os.path.getsize(out) == 0                        # nothing written yet
    al.logging(_ctx(path="/5"), None)                        # the 3rd pending record: flushed
    got = [orjson.loads(x) for x in _lines(out)]
    assert [x.get("path", x.get("line")) for x in got] == ["/1", 2, "/3", "/4", "/5"]
    assert buf.recs == [] and buf.buf == []


def test_an_unencodable_record_is_dropped_alone(tmp_path, clock, caplog):
    out = tmp_path / "access.log"
    buf = LogBuffer(str(out))
    al = access_log.AccessLog(None, None, buf)
    al.logging(_ctx(path="/before"), None)
    al.logging(_ctx(user="\ud800"), None)                   # a lone surrogate: not UTF-8
    al.logging(_ctx(path="/after"), None)
    buf.flush()
    assert [orjson.loads(x)["path"] for x in _lines(out)] == ["/before", "/after"]
    assert "log record dropped" in caplog.text


def test_pipe_writes_are_whole_lines_of_at_most_pipe_buf(clock):
    r, w = os.pipe()
    try:
        buf = LogBuffer(f"/dev/fd/{w}")
        assert buf.is_pipe
        al = access_log.AccessLog(None, None, buf)
        n = 3 * PIPE_BUF // 300
        for i in range(n):
            al.logging(_ctx(path=f"/p/{i}"), None)
        written = []
        real_write = os.write

        def spy(fd, data):
            written.append(bytes(data))
            return real_write(fd, data)

        os.write = spy
        try:
            buf.flush()
        finally:
            os.write = real_write
        assert len(written) > 1
        assert all(len(p) <= PIPE_BUF and p.endswith(b"\n") for p in written)
        data = os.read(r, 1 << 20)
        assert [orjson.loads(x)["path"] for x in data.split(b"\n")[:-1]] == [f"/p/{i}" for i in range(n)]
        buf.close()
    finally:
        os.close(r)
        os.close(w)
