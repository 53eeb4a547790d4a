"""Supervisor building blocks without processes: IPC messages and channels, restart-only
rules, per-slot sockets."""

from __future__ import annotations

import socket

import msgspec
import pytest

from fastgw.config import load_config_text
from fastgw.supervisor import ipc
from fastgw.supervisor.reload import check_tls, restart_only_changes
from fastgw.supervisor.sockets import BindError, Listeners

CFG = """
gateway: {host: 127.0.0.1, port: 8080, timeout: 250ms}
services:
  a:
    url: "http://127.0.0.1:1"
    timeout: 1m30s
    routes: [{path: "/*"}]
auth:
  jwt_secret: "${S:-0123456789abcdef0123456789abcdef}"
"""


def _cfg(text=CFG):
    return load_config_text(text)[0]


def test_reload_message_carries_the_same_validated_snapshot():
    cfg = _cfg()
    frame = ipc.encode(ipc.Reload(7, cfg))
    msg = ipc.decode(frame[4:])
    assert isinstance(msg, ipc.Reload) and msg.generation == 7
    assert msg.config == cfg
    assert type(msg.config.gateway.timeout).__name__ == "Duration"
    assert type(msg.config.auth.jwt_secret).__name__ == "Secret"


def test_channel_frames_survive_partial_reads_and_a_full_socket():
    sup, child = ipc.Channel.pair()
    try:
        big = ipc.Reload(1, _cfg())
        for _ in range(300):                      # more than the socket buffer: the outbox keeps the rest
            sup.send(big)
        sup.send(ipc.Stop())
        assert sup.outbox                          # nothing blocked
        got = []
        for _ in range(10000):
            got += child.receive()
            sup.flush()
            if len(got) == 301:
                break
        assert len(got) == 301 and isinstance(got[-1], ipc.Stop)
        child.send(ipc.Ready(0, 123))
        child.send(ipc.Beat())
        assert sup.receive() == [ipc.Ready(0, 123), ipc.Beat()]
        child.close()
        assert sup.receive() == [] and sup.closed
    finally:
        sup.close()
        child.close()


def test_unknown_message_is_a_decode_error():
    with pytest.raises(msgspec.ValidationError):
        ipc.decode(msgspec.msgpack.encode({"type": "nope"}))


def test_restart_only_changes():
    old = _cfg()
    assert restart_only_changes(old, _cfg()) == []
    changed = _cfg(CFG.replace("port: 8080", "port: 8081").replace("timeout: 250ms", "timeout: 1s"))
    errs = restart_only_changes(old, changed)
    assert errs == ["gateway.port: cannot change on reload (8080 -> 8081; the listening sockets are bound at start): "
                    "restart the gateway"]
    pp = _cfg(CFG.replace("timeout: 250ms}", "timeout: 250ms, trusted_proxies: [10.0.0.0/8], "
                                            "proxy_protocol: {enabled: true}}"))
    assert [e.split(":")[0] for e in restart_only_changes(old, pp)] == ["gateway.proxy_protocol.enabled"]
    rl = _cfg(CFG + "rate_limit:\n  table_slots: 1024\n")
    assert [e.split(":")[0] for e in restart_only_changes(old, rl)] == ["rate_limit.table_slots"]


def test_check_tls_names_the_problem(tmp_path):
    cfg = _cfg(CFG.replace("timeout: 250ms}", f"timeout: 250ms, tls: {{cert_file: {tmp_path}/c.pem, "
                                            f"key_file: {tmp_path}/k.pem}}}}"))
    (err,) = check_tls(cfg)
    assert err.startswith("gateway.tls: cannot load") and "c.pem" in err
    assert check_tls(_cfg()) == []


def test_listeners_share_one_port_across_slots():
    ls = Listeners([("127.0.0.1", 0)])
    try:
        a = ls.open_slot(0)
        b = ls.open_slot(1)
        assert a[0].getsockname() == b[0].getsockname()
        assert a[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        port = ls.addresses[0][1]
        ls.close_slot(1)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()   # slot 0 still listens
    finally:
        ls.close_all()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        with pytest.raises(BindError, match="cannot listen on 127.0.0.1:%d" % blocker.getsockname()[1]):
            Listeners([("127.0.0.1", blocker.getsockname()[1])]).open_slot(0)
    finally:
        blocker.close()


def test_the_supervisor_imports_no_event_loop():
    """DESIGN.md: importing the supervisor imports no event loop, uvloop or httptools; the
    children's modules are preloaded only when it runs (``child.preload``)."""
    import subprocess
    import sys
    code = ("import sys, fastgw.cli, fastgw.supervisor.arbiter; "
            "print(sorted(m for m in ('asyncio', 'uvloop', 'httptools', 'fastgw.runtime.worker', "
            "'fastgw.runtime.control') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_preload_imports_the_runtime_but_creates_no_loop_thread_or_socket():
    """The supervisor preloads the children's modules before fork: imports only."""
    import subprocess
    import sys
    code = r"""
import gc, json, socket, sys, threading
import asyncio.events as ev
from fastgw.supervisor.child import preload
failed = preload()
pol = ev._event_loop_policy
local = getattr(pol, "_local", None) if pol is not None else None
print(json.dumps({
    "failed": failed,
    "loaded": [m for m in ("uvloop", "httptools", "fastgw.runtime.worker", "fastgw.runtime.control",
                           "fastgw.middleware.auth") if m in sys.modules],
    "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()],
    "loop": ev._get_running_loop() is not None or getattr(local, "_loop", None) is not None,
    "sockets": [repr(o) for o in gc.get_objects() if isinstance(o, socket.socket)],
}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["failed"] == []
    assert doc["loaded"] == ["uvloop", "httptools", "fastgw.runtime.worker", "fastgw.runtime.control",
                             "fastgw.middleware.auth"]
    assert doc["threads"] == [] and doc["loop"] is False and doc["sockets"] == []
