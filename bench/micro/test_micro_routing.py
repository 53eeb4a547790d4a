"""Micro-benchmarks of the per-request routing work: path normalisation and route match.

Run separately: ``python -m pytest bench/micro -p no:xdist``.  Targets:
``normalize_path`` on a clean path well under 1 us, ``Router.match`` for an exact path
or a typical prefix route over ~20 routes about 1 us.  No assertion on timings.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastgw.http.normalize import normalize_path, split_target
from fastgw.routing import Router


def _route(path, methods=("GET", "POST", "PUT", "DELETE"), host=None, match=None, name=None):
    return SimpleNamespace(path=path, methods=list(methods), host=host, match=match, name=name or path)


def _table():
    """~20 routes shaped like a real config: three seed services plus typical extras."""
    paths = [
        "/api/v1/svg/*", "/api/v1/cmms/*", "/api/v1/database/*",
        "/api/v1/users/{id}", "/api/v1/users/{id}/roles", "/api/v1/users/{id}/*",
        "/api/v1/orgs/{org}/projects/{project}", "/api/v1/orgs/*",
        "/api/v2/svg/*", "/api/v2/cmms/work-orders/*", "/api/v2/cmms/assets/{id}",
        "/healthz", "/api/v1/status", "/api/v1/version", "/static/*", "/docs/*",
        "/api/v1/search", "/api/v1/upload", "/login", "/logout",
    ]
    entries = [(_route(p), p) for p in paths]
    entries.append((_route("/api/v1/svg/*", host="svg.example.com"), "svg-host"))
    entries.append((_route("/api/v1/cmms/*", match=SimpleNamespace(headers={"x-beta": "1"}, query={})), "beta"))
    return Router(entries)


ROUTER = _table()


def _no_headers(_lname):
    return None


def test_baseline_call(benchmark):
    """The floor: pytest-benchmark calling a function that does nothing."""
    benchmark(_no_headers, b"x")


@pytest.mark.parametrize("raw", [b"/api/v1/svg/files/abc-123/render", b"/", b"/api/v1/users/42"])
def test_normalize_clean(benchmark, raw):
    assert benchmark(normalize_path, raw)[0] == raw.decode()


@pytest.mark.parametrize("raw", [b"/api/v1/svg/./files//abc%2Drender", b"/api/v1/%73vg/../svg/x"])
def test_normalize_slow(benchmark, raw):
    benchmark(normalize_path, raw)


def test_split_target(benchmark):
    benchmark(split_target, b"/api/v1/svg/files/abc?size=large&fmt=png")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/v1/status", "/api/v1/status"),                     # exact
        ("/api/v1/svg/files/abc-123/render", "/api/v1/svg/*"),   # typical prefix route
        ("/api/v1/database/tables", "/api/v1/database/*"),       # prefix, shallow
        ("/api/v1/users/42/roles", "/api/v1/users/{id}/roles"),  # params
        ("/api/v1/cmms/work-orders/7", "/api/v1/cmms/*"),        # skips a header-conditioned route
    ],
)
def test_match(benchmark, path, expected):
    got = benchmark(ROUTER.match, "api.example.com", "GET", path, _no_headers, b"")
    assert got[0] == expected


def test_match_host_route(benchmark):
    got = benchmark(ROUTER.match, "svg.example.com:8443", "GET", "/api/v1/svg/x", _no_headers, b"")
    assert got[0] == "svg-host"


def test_normalize_then_match(benchmark):
    def request():
        path, _enc = normalize_path(b"/api/v1/svg/files/abc-123/render")
        return ROUTER.match("api.example.com", "GET", path, _no_headers, b"")

    assert benchmark(request)[0] == "/api/v1/svg/*"
