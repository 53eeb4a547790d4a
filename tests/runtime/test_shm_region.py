"""The region itself: versioned header, attach, fixed size, the small parts (worker slots,
health, broadcast), and the package's architecture rules."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import fastgw.shm
from fastgw.shm import LayoutError, Region, locks
from fastgw.shm.health import HEALTHY, UNHEALTHY, UNKNOWN
from fastgw.shm.layout import HEADER_SIZE, PARTS, VERSION
from fastgw.shm.workers import BOOTING, DRAINING, EMPTY, READY

PKG = pathlib.Path(fastgw.shm.__file__).parent


@pytest.fixture
def region():
    r = Region.create(4, metrics_series=128, table_slots=256, health_slots=32)
    yield r
    r.close()


def test_header_is_versioned_and_attach_checks_it(region):
    h = region.header
    assert h.version == VERSION and h.total_size == region.size == os.fstat(region.fd).st_size
    assert h.params == {"max_workers": 4, "metric_slots": 6, "metrics_series": 128,
                        "table_slots": 256, "health_slots": 32, "table_locks": locks.default_kind(),
                        "revocation_slots": 1024}
    offs = [h.offsets[p] for p in PARTS]
    assert offs == sorted(offs) and offs[0] >= HEADER_SIZE and all(o % 64 == 0 for o in offs)
    # a second mapping of the same memfd sees the same bytes and the same table secret
    other = Region.attach(os.dup(region.fd))
    try:
        region.broadcast.bump_config_generation()
        assert other.broadcast.config_generation == 1
        assert other.header.secret == h.secret and other.header.params == h.params
        assert other.ratelimit.check(b"k", 1, 1, 10**12)[0]
        assert not region.ratelimit.check(b"k", 1, 1, 10**12)[0]
    finally:
        other.close()


@pytest.mark.parametrize("offset, data, msg", [
    (0, b"NOTFASTG", "magic"),
    (8, (VERSION + 1).to_bytes(8, "little"), "version"),
    (24, (1 << 20).to_bytes(8, "little"), "bytes"),
])
def test_attach_refuses_another_layout(region, offset, data, msg):
    fd = os.dup(region.fd)
    os.pwrite(fd, data, offset)
    try:
        with pytest.raises(LayoutError, match=msg):
            Region.attach(fd)
    finally:
        os.close(fd)


def test_size_is_fixed_and_sealed(region):
    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd only")
    with pytest.raises(PermissionError):
        os.ftruncate(region.fd, region.size * 2)
    with pytest.raises(PermissionError):
        os.ftruncate(region.fd, 0)


@pytest.mark.parametrize("kwargs", [
    {"max_workers": 0}, {"max_workers": 2, "table_slots": 12}, {"max_workers": 2, "metrics_series": 0},
    {"max_workers": 2, "health_slots": -1},
])
def test_create_refuses_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        Region.create(**kwargs)


def test_close_is_idempotent():
    r = Region.create(1, metrics_series=8, table_slots=8, health_slots=1)
    with r:
        pass
    r.close()


def test_worker_slots(region):
    wt = region.workers
    ws = wt.slot(2)
    ws.boot(generation=7, pid=1234)
    assert wt.read(2).state == BOOTING and wt.read(2).pid == 1234
    ws.set_state(READY)
    ws.heartbeat(555)
    ws.served()
    ws.served(4)
    ws.set_generation(8)
    info = wt.read(2)
    got = (info.pid, info.generation, info.state_name, info.requests, info.heartbeat_ns)
    assert got == (1234, 8, "ready", 5, 555)
    assert info.started_ns > 0
    assert wt.read_all() == [info]
    ws.set_state(DRAINING)
    assert wt.retire(2).requests == 5
    assert wt.read(2).state == EMPTY and wt.read_all() == []
    assert (wt.retired_requests, wt.retired_workers, wt.total_requests()) == (5, 1, 5)
    with pytest.raises(IndexError):
        wt.slot(4)


def test_health_table(region):
    h = region.health
    assert h.states[5] == UNKNOWN and h.generation == 0
    assert h.set(5, HEALTHY, now_ns=111)
    assert not h.set(5, HEALTHY, now_ns=222)         # no change, no bump
    assert h.set(5, UNHEALTHY, now_ns=333)
    assert (h.state(5), h.changed_at(5), h.generation) == (UNHEALTHY, 333, 2)


def test_broadcast(region):
    b = region.broadcast
    assert b.bump_config_generation() == 1 and b.bump_purge_generation() == 1
    b.set_config_generation(9)
    assert (b.config_generation, b.purge_generation) == (9, 1)


ALLOWED = {"fastgw.errors", "fastgw.clock", "fastgw.config"}


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_module_keeps_the_layer_rule_and_imports_alone(path):
    mod = "fastgw.shm" + ("" if path.stem == "__init__" else "." + path.stem)
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            top = name.split(".")[0]
            ok = (top in sys.stdlib_module_names or name.startswith("fastgw.shm")
                  or any(name == a or name.startswith(a + ".") for a in ALLOWED))
            assert ok, f"{mod} imports {name}"
    root = str(PKG.parent.parent)
    subprocess.run([sys.executable, "-c", f"import {mod}"], check=True, cwd=root, timeout=30,
                   env={**os.environ, "PYTHONPATH": root})
