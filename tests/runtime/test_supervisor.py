"""The supervisor with real processes on 127.0.0.1: start-up, respawn, hung workers,
boot failures, TTIN/TTOU, the control process, USR1.  Every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.support.gateway import Gateway
from tests.support.procs import (KeepAliveLoad, NewConnLoad, admin, children, config, get, ready_workers,
                                 supervisor_maps, workers)
from tests.support.upstream import EchoUpstream
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def up():
    with EchoUpstream() as u:
        yield u


def test_start_two_workers_admin_and_pid_file(up, tmp_path):
    pid_file = tmp_path / "fastgw.pid"
    with Gateway(config(up), workers=2, extra_args=["--pid-file", str(pid_file)]) as gw:
        assert pid_file.read_text().strip() == str(gw.proc.pid)
        doc = wait_for(lambda: (d := workers(gw)) and sum(w["state"] == "ready" for w in d["workers"]) == 2 and d)
        assert doc, workers(gw)
        pids = {w["pid"] for w in doc["workers"]}
        assert len(pids) == 2 and gw.proc.pid not in pids
        assert set(children(gw.proc.pid)) >= pids          # forked by the supervisor
        assert len(children(gw.proc.pid)) == 3              # two workers and the control process
        assert admin(gw, "/livez")[0] == 200
        assert admin(gw, "/readyz")[0] == 200
        assert get(gw.port, "/x")[0] == 200
        st, _, body = get(gw.port, "/healthz")
        assert st == 200 and b"ready" in body
        # the supervisor preloads the workers' modules (uvloop is mapped) but runs no event
        # loop (no epoll instance among its files) and no thread
        maps = supervisor_maps(gw.proc.pid)
        assert "uvloop" in maps and "httptools" in maps
        fds = [os.readlink(f"/proc/{gw.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{gw.proc.pid}/fd")]
        assert not [f for f in fds if "eventpoll" in f], fds
        assert os.listdir(f"/proc/{gw.proc.pid}/task") == [str(gw.proc.pid)]
        # each line printed once
        assert sum("fastgw: listening on" in x for x in gw.stdout_lines) == 1
        assert sum("fastgw: admin listening on" in x for x in gw.stdout_lines) == 1
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(10) == 0
    assert not pid_file.exists()


@pytest.mark.timing
def test_kill9_under_load_only_that_workers_connections_fail(up):
    with Gateway(config(up), workers=2) as gw:
        before = wait_for(lambda: (r := ready_workers(gw)) and len(r) == 2 and r)
        assert before
        with KeepAliveLoad(gw.host, gw.port, conns=20, reconnect=True) as load:
            time.sleep(1.0)
            ok_before = load.ok
            assert ok_before > 0 and load.failed == 0, load.errors[:5]
            victim_slot, victim = sorted(before.items())[0]
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            replaced = wait_for(lambda: (r := ready_workers(gw)).get(victim_slot) not in (None, victim) and r,
                                timeout=5, interval=0.02)
            took = time.monotonic() - t0
            assert replaced, workers(gw)
            time.sleep(1.0)
        # the survivor's connections never failed; only connections of the killed worker did,
        # each at most once, and requests kept succeeding on the others meanwhile
        assert took < 1.5, f"replacement ready after {took:.2f}s"
        assert 0 < load.failed <= 20, (load.failed, load.errors[:5])
        assert all(t >= t0 for t in load.fail_times)
        during = [t for t in load.ok_times if t0 <= t <= t0 + took]
        assert during or took < 0.1, "no request succeeded while the worker was being replaced"
        assert load.ok > ok_before
        doc = workers(gw)
        assert doc["retired"]["workers"] == 1
        assert any("worker 0" in x and "killed by SIGKILL" in x for x in gw.stderr_lines)


@pytest.mark.timing
def test_sigstopped_worker_is_killed_and_replaced(up):
    with Gateway(config(up), workers=2, env={"FASTGW_HEARTBEAT_TIMEOUT": "1.5"}) as gw:
        before = wait_for(lambda: (r := ready_workers(gw)) and len(r) == 2 and r)
        slot, victim = sorted(before.items())[1]
        os.kill(victim, signal.SIGSTOP)
        try:
            # /metrics is summed from shared memory: it answers while a worker is stopped
            t = time.monotonic()
            st, _, body = admin(gw, "/metrics", timeout=2)
            assert st == 200 and time.monotonic() - t < 1.5
            replaced = wait_for(lambda: (r := ready_workers(gw)).get(slot) not in (None, victim) and r, timeout=8)
            assert replaced, workers(gw)
            assert wait_for(lambda: not os.path.exists(f"/proc/{victim}") or _zombie(victim), timeout=3)
            assert any("no heartbeat" in x for x in gw.stderr_lines), gw.stderr_lines[-10:]
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert get(gw.port, "/x")[0] == 200


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] in ("Z", "X")
    except OSError:
        return True


def _run_to_exit(cfg_text: str, workers: int = 2, extra=(), timeout: float = 20.0):
    gw = Gateway(cfg_text, workers=workers, extra_args=extra)
    try:
        gw.start()
    except RuntimeError:
        pass
    try:
        code = gw.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        gw.kill()
        raise AssertionError("the supervisor did not exit:\n" + "\n".join(gw.stderr_lines[-30:])) from None
    time.sleep(0.2)  # let the pump threads read the last lines
    return gw, code


def test_worker_that_cannot_boot_stops_the_gateway(up, tmp_path):
    missing = tmp_path / "missing-cert.pem"
    text = config(up).replace("  trusted_proxies: []",
                              f"  trusted_proxies: []\n  tls: {{cert_file: {missing}, key_file: {missing}}}")
    gw, code = _run_to_exit(text)
    try:
        err = "\n".join(gw.stderr_lines)
        assert code == 3, err
        assert "could not boot" in err and str(missing) in err, err
        assert err.count("forked") <= 2, "respawn loop:\n" + err   # the two initial workers only
        assert not any("listening on" in x and "admin" not in x for x in gw.stdout_lines)
    finally:
        gw.tmp.cleanup()


def test_port_in_use_is_a_clear_error(up):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)                     # no SO_REUSEPORT: nobody may share it
    port = blocker.getsockname()[1]
    try:
        gw, code = _run_to_exit(config(up), extra=["--bind", f"127.0.0.1:{port}"])
        try:
            err = "\n".join(gw.stderr_lines)
            assert code == 1, err
            assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err, err
        finally:
            gw.tmp.cleanup()
    finally:
        blocker.close()


def test_ttin_ttou_and_connections_on_a_retired_slot(up):
    with Gateway(config(up), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        gw.signal(signal.SIGTTIN)
        assert wait_for(lambda: len(ready_workers(gw)) == 3 and workers(gw)["desired"] == 3), workers(gw)
        assert admin(gw, "/readyz")[0] == 200
        with NewConnLoad(gw.host, gw.port, threads=4) as load:
            time.sleep(0.7)
            gw.signal(signal.SIGTTOU)
            assert wait_for(lambda: len(workers(gw)["workers"]) == 2 and workers(gw)["desired"] == 2), workers(gw)
            time.sleep(0.7)
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            migrate = f.read().strip()
        # Measured, not assumed: with tcp_migrate_req=0 a connection still queued on the
        # retired slot's socket when it closes is reset; the worker accepts until then, so
        # the loss is at most what queued in that instant (docs/operations.md).
        print(f"\nTTOU under new-connection load: {load.ok} ok, {load.failed} failed "
              f"(net.ipv4.tcp_migrate_req={migrate})")
        assert load.ok > 50
        assert load.failed <= max(5, load.ok // 100), load.errors[:5]
        assert admin(gw, "/readyz")[0] == 200


def test_control_process_is_respawned_on_the_same_port(up):
    with Gateway(config(up), workers=1) as gw:
        port = gw.wait_admin()
        ws = set(ready_workers(gw).values())
        ctl = [p for p in children(gw.proc.pid) if p not in ws]
        assert len(ctl) == 1
        os.kill(ctl[0], signal.SIGKILL)
        assert wait_for(lambda: admin(gw, "/livez", timeout=1)[0] == 200, timeout=5)
        new = [p for p in children(gw.proc.pid) if p not in ws]
        assert new and new[0] != ctl[0]
        assert gw.admin_port == port


def test_usr1_reopens_the_access_log(up, tmp_path):
    text = config(up).replace("""    access_log:
      enabled: false""", """    access_log:
      enabled: true
      output: "{ACCESS_LOG}\"""")
    with Gateway(text, workers=1) as gw:
        assert get(gw.port, "/one")[0] == 200
        assert wait_for(lambda: os.path.exists(gw.access_log) and "/one" in open(gw.access_log).read(), timeout=4)
        os.rename(gw.access_log, gw.access_log + ".1")
        gw.signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert get(gw.port, "/two")[0] == 200
        assert wait_for(lambda: os.path.exists(gw.access_log) and "/two" in open(gw.access_log).read(), timeout=4)
        assert "/two" not in open(gw.access_log + ".1").read()


@pytest.mark.timing
def test_int_is_a_fast_stop(up):
    with Gateway(config(up, delay="5s", timeout="30s"), workers=2) as gw:
        import threading
        res = {}
        t = threading.Thread(target=lambda: res.setdefault("r", _try_get(gw.port, "/delay/5000")), daemon=True)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        gw.signal(signal.SIGINT)
        assert gw.proc.wait(5) == 0
        assert time.monotonic() - t0 < 4
        t.join(6)


def _try_get(port, path):
    try:
        return get(port, path, timeout=8)[0]
    except OSError as e:
        return repr(e)


@pytest.mark.timing
def test_replacements_that_cannot_boot_stop_the_gateway_after_backoff(up, tmp_path):
    from tests.support.certs import self_signed
    cp, kp, _ = self_signed(tmp_path)
    tls = f"  tls: {{cert_file: {cp}, key_file: {kp}}}"
    text = config(up).replace("  trusted_proxies: []", "  trusted_proxies: []\n" + tls)
    with Gateway(text, workers=2) as gw:
        before = wait_for(lambda: (r := ready_workers(gw)) and len(r) == 2 and r)
        os.unlink(cp)                                 # the replacement will not find its certificate
        t0 = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        code = gw.proc.wait(20)
        took = time.monotonic() - t0
        time.sleep(0.2)
        err = "\n".join(gw.stderr_lines)
        assert code == 3, err[-3000:]
        assert err.count("could not boot (") == 4 and "fastgw: worker 0 could not boot: gateway.tls" in err, err[-3000:]
        assert took > 3.5, "no backoff between attempts"   # 0 + 0.25 + 0.5 + 1 + 2 s of backoff


def test_workers_exit_when_the_supervisor_is_killed(up):
    with Gateway(config(up), workers=2) as gw:
        assert wait_for(lambda: len(ready_workers(gw)) == 2)
        kids = children(gw.proc.pid)
        assert len(kids) == 3
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(5)
        assert wait_for(lambda: not any(os.path.exists(f"/proc/{k}") and not _zombie(k) for k in kids), timeout=8)
