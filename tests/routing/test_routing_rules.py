"""Routing rules and API versions end to end (issue 26 items 1 and 4): a real gateway
process and real echo upstreams.  Each route is its own service with its own upstream
named after the route, so the echo says which route won.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.support.waiting import wait_for
from tests.support.wire import exchange, parse_responses, problem_of
from tests.support.gateway import Gateway
from tests.support.upstream import EchoUpstream
from tests.support.procs import metrics_text, series
from tests.support.procs import promtool_check

ROUTES = r"""
plain:      {path: "/r/*"}
hdr-regex:  {path: "/r/*", match: {headers: {X-Version: {regex: "^2\\."}}}}
qry-regex:  {path: "/q", match: {query: {id: {regex: "^[0-9]+$"}}}}
q-plain:    {path: "/q"}
absent:     {path: "/abs", match: {headers: {X-Debug: {absent: true}}}}
present:    {path: "/abs", match: {headers: {X-Debug: "*"}}}
cookie:     {path: "/c/*", match: {cookies: {beta: "1"}}}
c-regex:    {path: "/c/*", match: {cookies: {beta: {regex: "^b"}}}}
c-plain:    {path: "/c/*"}
combo:      {path: "/k", match: {any: [{headers: {X-A: "*"}}, {query: {a: "*"}}], not: {cookies: {legacy: "*"}}}}
all-of:     {path: "/k", match: {all: [{headers: {X-A: "1"}}, {headers: {X-B: "1"}}]}}
k-plain:    {path: "/k"}
one-cond:   {path: "/m", match: {headers: {X-A: "1"}}}
two-conds:  {path: "/m", match: {headers: {X-A: "1", X-B: "1"}}}
first-a:    {path: "/f", match: {headers: {X-A: "1"}}}
then-b:     {path: "/f", match: {headers: {X-B: "1"}}}
lit:        {path: "/p/special"}
param:      {path: "/p/{id}"}
rx:         {path: {regex: "^/p/[a-z]+/[a-z]+$"}}
rx-file:    {path: {regex: "^/files/(?P<name>[a-z]+)\\.pdf$"}, methods: [GET]}
items-v1:   {path: "/items", match: {version: "1"},
             deprecation: {deprecated: 2020-01-01, sunset: 2099-01-01, link: "https://docs.example/v1",
                           successor: "/v2/items"}}
items-v2:   {path: "/items", match: {version: "2"}}
orders-v1:  {path: "/v1/orders/*", version: "1",
             deprecation: {deprecated: 2020-01-01, sunset: "2021-01-01T12:00:00Z", successor: "/v2/orders",
                           gone_after_sunset: true}}
orders-v2:  {path: "/v2/orders/*", version: "2"}
future:     {path: "/future", deprecation: {deprecated: 2099-01-01, sunset: 2099-06-01, successor: "/next"}}
"""


NAMES = [line.partition(":")[0] for line in ROUTES.strip().split("\n") if line[:1] != " "]


def _config(ups: dict) -> str:
    out = ["gateway:", "  host: 127.0.0.1", "  port: 0",
           '  versioning: {header: API-Version, media_type: true, default: "1"}', "services:"]
    for line in ROUTES.strip().split("\n"):
        if line[:1] != " ":
            name, _, rest = line.partition(":")
            out += [f"  {name}:", f'    url: "http://{ups[name]}"', "    routes:", f"      - {rest.strip()}"]
        else:
            out[-1] += " " + line.strip()
    out += ["monitoring:", "  metrics_port: 0", "  logging: {level: warning}"]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def ups():
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(EchoUpstream(n)) for n in NAMES}


@pytest.fixture(scope="module")
def gw(ups):
    with Gateway(_config({n: u.addr for n, u in ups.items()})) as g:
        yield g


def _route(gw, target: str, headers: dict | None = None) -> str:
    """The name of the route that took the request, or the status code when the gateway answered."""
    st, _hd, body = gw.request("GET", target, headers=headers)
    if st != 200:
        return str(st)
    return json.loads(body)["service"]


def test_regex_headers_and_query(gw):
    assert _route(gw, "/r/x", {"X-Version": "2.1"}) == "hdr-regex"
    assert _route(gw, "/r/x", {"X-Version": "20"}) == "plain"       # a dot after 2 is required
    assert _route(gw, "/r/x") == "plain"
    assert _route(gw, "/q?id=42") == "qry-regex"
    assert _route(gw, "/q?id=x&id=7") == "qry-regex"                 # any occurrence
    assert _route(gw, "/q?id=4x") == "q-plain"


def test_absent_and_present(gw):
    assert _route(gw, "/abs") == "absent"
    assert _route(gw, "/abs", {"X-Debug": "0"}) == "present"


def test_cookies(gw):
    assert _route(gw, "/c/1", {"Cookie": "a=b; beta=1"}) == "cookie"
    assert _route(gw, "/c/1", {"Cookie": "beta=b2"}) == "c-regex"
    assert _route(gw, "/c/1", {"Cookie": "beta=0"}) == "c-plain"
    assert _route(gw, "/c/1") == "c-plain"


def test_any_all_not(gw):
    assert _route(gw, "/k", {"X-A": "x"}) == "combo"
    assert _route(gw, "/k?a=1") == "combo"
    assert _route(gw, "/k?a=1", {"Cookie": "legacy=1"}) == "k-plain"  # not
    assert _route(gw, "/k") == "k-plain"                              # neither side of any
    # all-of has 2 conditions, combo 3 (X-A, a, legacy): combo ranks first and holds
    assert _route(gw, "/k", {"X-A": "1", "X-B": "1"}) == "combo"
    assert _route(gw, "/k", {"X-A": "1", "X-B": "1", "Cookie": "legacy=1"}) == "all-of"
    assert _route(gw, "/k", {"X-A": "1", "Cookie": "legacy=1"}) == "k-plain"


def test_precedence_conditions_then_file_order(gw):
    assert _route(gw, "/m", {"X-A": "1", "X-B": "1"}) == "two-conds"  # listed after one-cond
    assert _route(gw, "/m", {"X-A": "1"}) == "one-cond"
    assert _route(gw, "/m") == "404"
    assert _route(gw, "/f", {"X-A": "1", "X-B": "1"}) == "first-a"    # same weight: file order
    assert _route(gw, "/f", {"X-B": "1"}) == "then-b"


def test_precedence_literal_param_regex_and_regex_paths(gw):
    assert _route(gw, "/p/special") == "lit"
    assert _route(gw, "/p/abc") == "param"
    assert _route(gw, "/p/abc/def") == "rx"
    assert _route(gw, "/p/abc/d3f") == "404"
    assert _route(gw, "/files/report.pdf") == "rx-file"
    assert _route(gw, "/files/report.pdfx") == "404"                  # the whole path must match
    st, hd, _ = gw.request("POST", "/files/report.pdf", body=b"")
    assert st == 405 and hd["allow"] == "GET, HEAD"


def test_conditions_evaluated_per_request_on_one_connection(gw):
    # the match cache keeps a "conditional" marker for /r/x: the same target alternates
    raw = b"".join(b"GET /r/x HTTP/1.1\r\nHost: gw\r\n" + (b"X-Version: 2.0\r\n" if i % 2 else b"") + b"\r\n"
                   for i in range(6)) + b"GET /p/special HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    data, _ = exchange(gw.port, raw)
    got = [json.loads(b)["service"] for _s, _h, b in parse_responses(data)]
    assert got == ["plain", "hdr-regex"] * 3 + ["lit"]


def test_version_by_header_media_type_default_and_path(gw):
    assert _route(gw, "/items", {"API-Version": "2"}) == "items-v2"
    assert _route(gw, "/items", {"API-Version": "v2"}) == "items-v2"
    assert _route(gw, "/items", {"Accept": "application/vnd.arx.v2+json"}) == "items-v2"
    assert _route(gw, "/items", {"Accept": "text/html, application/json; version=2"}) == "items-v2"
    assert _route(gw, "/items", {"API-Version": "1", "Accept": "application/vnd.arx.v2+json"}) == "items-v1"
    assert _route(gw, "/items") == "items-v1"                          # default
    assert _route(gw, "/items", {"API-Version": "3"}) == "404"
    assert _route(gw, "/v2/orders/1") == "orders-v2"


def test_deprecation_sunset_and_link_headers(gw):
    st, hd, _ = gw.request("GET", "/items")
    assert st == 200
    assert hd["deprecation"] == "@1577836800"                          # 2020-01-01T00:00:00Z
    assert hd["sunset"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    assert parsedate_to_datetime(hd["sunset"]).timestamp() == 4070908800
    assert hd["link"] == '<https://docs.example/v1>; rel="deprecation", </v2/items>; rel="successor-version"'
    st, hd, _ = gw.request("GET", "/items", headers={"API-Version": "2"})
    assert "deprecation" not in hd and "sunset" not in hd and "link" not in hd
    st, hd, _ = gw.request("GET", "/future")                          # announced, not deprecated yet
    assert st == 200 and "deprecation" not in hd
    assert hd["sunset"] == "Mon, 01 Jun 2099 00:00:00 GMT" and hd["link"] == '</next>; rel="successor-version"'


def test_gone_after_sunset_without_reaching_the_upstream(gw, ups):
    before = len(ups["orders-v1"].requests)
    st, hd, body = gw.request("GET", "/v1/orders/7")
    assert st == 410 and hd["content-type"] == "application/problem+json"
    doc = problem_of(body)
    assert doc["status"] == 410 and doc["title"] == "Gone" and doc["successor"] == "/v2/orders"
    assert "/v2/orders" in doc["detail"] and "Fri, 01 Jan 2021 12:00:00 GMT" in doc["detail"]
    assert hd["deprecation"] == "@1577836800" and hd["sunset"] == "Fri, 01 Jan 2021 12:00:00 GMT"
    assert hd["link"] == '</v2/orders>; rel="successor-version"'
    assert len(ups["orders-v1"].requests) == before


def test_deprecated_requests_are_counted(gw):
    for _ in range(3):
        assert gw.request("GET", "/items")[0] == 200
    assert gw.request("GET", "/v1/orders/1")[0] == 410

    def counts():
        return series(metrics_text(gw), "fastgw_deprecated_requests_total")
    served = '{route="items-v1-0",version="1",outcome="served",client="anonymous"}'
    gone = '{route="orders-v1-0",version="1",outcome="gone",client="unknown"}'
    assert wait_for(lambda: counts().get(served, 0) >= 3 and counts().get(gone, 0) >= 1, timeout=3, interval=0.1), counts()
    assert not any("future" in k for k in counts())
    promtool_check(metrics_text(gw))


def test_fastgw_routes_json_and_markdown(tmp_path):
    path = tmp_path / "gw.yaml"
    text = _config({n: "127.0.0.1:9" for n in NAMES})
    path.write_text(text)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "fastgw", "routes", "-c", str(path), "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    by = {r["route"]: r for r in rows}
    assert set(by) == {f"{n}-0" for n in NAMES}
    assert by["items-v1-0"]["version"] == "1" and by["items-v1-0"]["deprecated"] == "2020-01-01"
    assert by["items-v1-0"]["sunset"] == "2099-01-01" and by["items-v1-0"]["successor"] == "/v2/items"
    assert by["orders-v1-0"]["sunset"] == "2021-01-01T12:00:00Z" and by["orders-v1-0"]["gone_after_sunset"] is True
    assert by["rx-file-0"]["path"] == {"regex": r"^/files/(?P<name>[a-z]+)\.pdf$"}
    assert by["rx-file-0"]["methods"] == ["GET", "HEAD"]
    assert by["combo-0"]["match"] == {"any": [{"headers": {"x-a": "*"}}, {"query": {"a": "*"}}],
                                    "not": {"cookies": {"legacy": "*"}}}
    order = [r["route"] for r in rows]
    # router precedence: exact paths, then patterns, regex paths last; within /m more conditions first
    assert order.index("two-conds-0") < order.index("one-cond-0")
    assert order.index("lit-0") < order.index("param-0") < order.index("rx-0")
    assert order[-2:] == ["rx-0", "rx-file-0"]
    md = subprocess.run([sys.executable, "-m", "fastgw", "routes", "-c", str(path)],
                        capture_output=True, text=True, check=True).stdout
    lines = md.splitlines()
    assert lines[0].startswith("| service | route | host | path | methods |")
    assert any(x.startswith("| orders-v1 | orders-v1-0 | * | `/v1/orders/*` | GET, HEAD |") and
               "| 1 |" in x and "| 2020-01-01 | 2021-01-01T12:00:00Z | /v2/orders | yes |" in x for x in lines)
    assert len(lines) == 2 + len(rows)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('"^/p/[a-z]+/[a-z]+$"', '"^/p/(?=x)"'))
    r = subprocess.run([sys.executable, "-m", "fastgw", "routes", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "services.rx.routes[0].path.regex: invalid regular expression" in r.stderr
    assert time.monotonic() - t0 < 10
