"""The supervisor (L8): pre-fork process manager of the workers and the control process.

It runs no event loop: its loop is ``select`` on a wake-up pipe and the children's
channels, with a half-second timeout.  In order it

1. creates the shared-memory region (``fastgw.shm.Region``) and binds, before any fork,
   one SO_REUSEPORT socket per worker slot and the admin socket, and keeps them
   (``sockets``: a replacement worker for slot i inherits socket i); preloads the
   children's modules (``child.preload``: imports only, no loop, thread or socket) and
   freezes them out of the cyclic GC, so a respawn is a fork, not a re-import;
2. forks the control process and the workers (``child``), then prints
   ``fastgw: listening on HOST:PORT`` once every worker accepts, and
   ``fastgw: admin listening on HOST:PORT`` once the control process does;
3. loops: dispatches recorded signals, reads the channels, reaps children, kills hung
   ones, respawns dead ones.

Signal handlers only record the signal (and the interpreter writes a byte to the
wake-up pipe); the loop calls ``handle_<name>``, each documented with what the signal
means to the operator (STYLE.md item 1; gunicorn's arbiter is the model).

Rules:

- A worker that dies is respawned at once; one that keeps dying young waits longer each
  time (0.25 s doubling to 15 s).  Before it is forked again its slot is retired and its
  counters folded into the retired area (``Region.fold_dead``), so /metrics counters
  never go backwards.
- A worker that cannot boot (exit status ``child.BOOT_ERROR``, reason sent on its
  channel) at start-up stops the gateway: the reason on stderr, exit status 3.  After
  start-up a slot whose replacements fail to boot 5 times in a row does the same; until
  then the others keep serving.
- A worker whose heartbeat (shared memory, every second) is older than
  ``FASTGW_HEARTBEAT_TIMEOUT`` seconds (default 10; lower only in tests) is SIGKILLed and
  replaced; so is a control process whose ``Beat`` messages stop.
- Reload (HUP, or a ``ReloadRequest`` from the control process for ``POST /admin/reload``):
  the config file is read and validated here, once (``reload.attempt``: restart-only
  changes refused, nothing changed = no-op, the change summary logged and audited); the
  validated snapshot is encoded once and the same bytes go to every child.  A child
  forked later gets the snapshot by fork.
- Logs: the operational log (``fastgw.obs.oplog``) is set up before fork and inherited;
  USR1 reopens it here and in every child.  Signals and reloads go to the audit log.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import sys
import time

from fastgw.config.ratelimit_section import table_slots
from fastgw.obs import oplog
from fastgw.obs.audit import AuditLog
from fastgw.resilience.identity import assign_slots
from fastgw.shm import Region
from fastgw.supervisor import child as childmod
from fastgw.supervisor import ipc
from fastgw.supervisor.children import Child, Slot, describe_exit, heartbeat_timeout
from fastgw.supervisor.limits import per_worker, raise_nofile
from fastgw.supervisor.reload import Reloader, attempt, revocation_slots
from fastgw.supervisor.sockets import BindError, Listeners, bind_listener

log = logging.getLogger("fastgw")

EXIT_OK = 0
EXIT_SETUP = 1          # cannot bind, cannot create shared memory
EXIT_BOOT = 3           # a worker or the control process could not boot
FAST_STOP_GRACE = 3.0   # INT: children get this long before SIGKILL
DRAIN_GRACE = 5.0       # TERM: on top of drain.delay + drain.timeout
YOUNG = 5.0             # a child that dies younger than this counts toward backoff
MAX_BOOT_FAILURES = 5
METRICS_SERIES = 8192


class Arbiter:
    SIGNALS = {
        signal.SIGHUP: "hup", signal.SIGINT: "int", signal.SIGTERM: "term", signal.SIGUSR1: "usr1",
        signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld",
    }

    def __init__(self, cfg, config_path: str, binds: list[tuple[str, int]], workers: int,
                 warnings=()) -> None:
        self.cfg = cfg
        self.reloader = Reloader(config_path, cfg, warnings)
        self.audit = AuditLog(None)
        self.api_sock = None        # the admin API (monitoring.admin), when configured
        self.config_path = config_path
        self.listeners = Listeners(binds)
        self.desired = max(1, workers)
        self.max_slots = max(2 * self.desired, self.desired + 4)
        self.hb_timeout = heartbeat_timeout()
        self.boot_timeout = max(30.0, self.hb_timeout)
        self.region = None
        self.admin_sock = None
        self.wake_r = self.wake_w = -1
        self.children: dict[int, Child] = {}
        self.slots: dict[int, Slot] = {}
        self.control_fails = 0
        self.control_respawn_at = 0.0
        self.control_pid = 0
        self.control_announced = False
        self.generation = 0
        self.sig_queue: list[str] = []
        self.stopping = ""          # "" | "drain" | "fast"
        self.deadline = 0.0
        self.killed_all = False
        self.control_stopped = False
        self.exit_code = EXIT_OK
        self.announced = False
        self.m = None               # supervisor's metric writer and cells
        self.drained = [0, 0, 0]    # TERM: workers that reported, connections drained, aborted

    # ------------------------------------------------------------------ start
    def run(self) -> int:
        try:
            self._setup()
        except (BindError, OSError, ValueError) as e:
            print(f"fastgw: {e}", file=sys.stderr, flush=True)
            self._cleanup()
            return EXIT_SETUP
        try:
            self._spawn_control()
            for slot in list(self.slots):
                self._spawn_worker(slot)
            while self.children or not self.stopping:
                self._loop_once()
            if self.stopping == "drain":
                n, drained, aborted = self.drained
                log.info("drain complete: %d connections drained, %d aborted (%d workers reported); exiting %d",
                         drained, aborted, n, self.exit_code)
        except Exception as e:      # a supervisor bug: take everything down rather than limp
            log.exception("supervisor failed: %s", e)
            print(f"fastgw: supervisor error: {e}", file=sys.stderr, flush=True)
            self.exit_code = EXIT_SETUP
        finally:
            self._cleanup()
        return self.exit_code

    def _setup(self) -> None:
        cfg = self.cfg
        nofile, warns = raise_nofile(cfg, self.desired)
        for line in warns:
            log.warning("%s", line)
        log.info("open files: soft limit %d (%d needed per worker)", nofile, per_worker(cfg))
        self.region = Region.create(self.max_slots, metrics_series=METRICS_SERIES,
                                    table_slots=table_slots(cfg.rate_limit),
                                    health_slots=cfg.gateway.max_upstream_instances,
                                    revocation_slots=revocation_slots(cfg))
        assign_slots(self.region.health, cfg)  # instance slots, before any child builds its App
        w = self.region.metrics.writer(self.region.metrics.supervisor_slot)
        self.m = (w, w.counter("fastgw_worker_restarts_total"),
                  w.counter('fastgw_config_reloads_total{result="ok"}'),
                  w.counter('fastgw_config_reloads_total{result="failed"}'),
                  w.counter("fastgw_config_apply_failures_total"))
        for slot in range(self.desired):
            self.listeners.open_slot(slot)
            self.slots[slot] = Slot()
        mon = cfg.monitoring
        try:
            self.admin_sock = bind_listener(mon.metrics_host, mon.metrics_port, reuse_port=False, backlog=128)
        except BindError as e:
            raise BindError(f"admin listener: {e}") from None
        if mon.admin is not None:
            try:
                self.api_sock = bind_listener(mon.admin.host, mon.admin.port, reuse_port=False, backlog=128)
            except BindError as e:
                raise BindError(f"admin API listener (monitoring.admin): {e}") from None
        self.audit = AuditLog.of(cfg)
        for line in childmod.preload():
            log.warning("preload: %s (the children import it themselves)", line)
        gc.freeze()                 # what the children inherit stays shared (copy-on-write)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._record_signal)
        log.info("supervisor %d: %d workers, config %s", os.getpid(), self.desired, self.config_path)

    def _record_signal(self, signum, frame) -> None:
        """Only record (STYLE.md item 1); the main loop dispatches."""
        name = self.SIGNALS.get(signum)
        if name == "chld" or name is None:
            return                  # reaping happens on every loop turn; the pipe woke us
        if len(self.sig_queue) < 20:
            self.sig_queue.append(name)

    # ------------------------------------------------------------------ loop
    def _loop_once(self) -> None:
        now = time.monotonic()
        timeout = 0.5
        for st in self.slots.values():
            if not st.pid and not st.retiring and not self.stopping:
                timeout = min(timeout, max(0.0, st.respawn_at - now))
        chans = [c for c in self.children.values() if not c.chan.closed]
        rlist = [self.wake_r] + [c.chan.sock for c in chans]
        wlist = [c.chan.sock for c in chans if c.chan.outbox]
        r, w, _ = select.select(rlist, wlist, [], timeout)
        if self.wake_r in r:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for c in chans:
            if c.chan.sock in w:
                c.chan.flush()
            if c.chan.sock in r:
                self._read(c)
        while self.sig_queue:
            name = self.sig_queue.pop(0)
            log.info("signal %s", name.upper())
            self.audit.write("signal", signal=name.upper(), pid=os.getpid())
            getattr(self, "handle_" + name)()
        self._reap()
        self._murder()
        self._manage()

    def _read(self, c: Child) -> None:
        try:
            msgs = c.chan.receive()
        except Exception as e:
            log.error("%s %d sent an unreadable message: %s", c.kind, c.pid, e)
            return
        for msg in msgs:
            fn = getattr(self, "on_" + type(msg).__name__.lower(), None)
            if fn is None:
                log.warning("%s %d sent an unexpected %s message", c.kind, c.pid, type(msg).__name__)
                continue
            fn(c, msg)

    # ------------------------------------------------------------------ messages from children
    def on_ready(self, c: Child, msg: ipc.Ready) -> None:
        c.ready = True
        if c.kind == "control":
            if not self.control_announced:
                self.control_announced = True
                print(f"fastgw: admin listening on {msg.host}:{msg.port}", flush=True)
                if self.api_sock is not None:
                    host, port = self.api_sock.getsockname()[:2]
                    print(f"fastgw: admin API listening on {host}:{port}", flush=True)
            return
        st = self.slots.get(c.slot)
        if st is not None:
            st.boot_failures = 0
        log.info("worker %d ready (pid %d)", c.slot, c.pid)

    def on_bootfailed(self, c: Child, msg: ipc.BootFailed) -> None:
        c.boot_error = msg.reason

    def on_applied(self, c: Child, msg: ipc.Applied) -> None:
        log.debug("%s %d on config generation %d", c.kind, c.pid, msg.generation)

    def on_applyfailed(self, c: Child, msg: ipc.ApplyFailed) -> None:
        log.error("worker %d (pid %d) could not apply config generation %d: %s; replacing it",
                  c.slot, c.pid, msg.generation, msg.error)
        self.m[0].inc(self.m[4])
        c.killed = f"replaced: could not apply config generation {msg.generation}"
        c.chan.send(ipc.Drain(0.0, float(self.cfg.gateway.drain.timeout)))

    def on_drained(self, c: Child, msg: ipc.Drained) -> None:
        self.drained[0] += 1
        self.drained[1] += msg.drained
        self.drained[2] += msg.aborted

    def on_beat(self, c: Child, msg: ipc.Beat) -> None:
        c.last_beat = time.monotonic()

    # ------------------------------------------------------------------ children
    def _in_child(self, keep: list) -> None:
        """Right after fork: drop the supervisor's signal set-up and every fd not ours."""
        signal.set_wakeup_fd(-1)
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        keep_ids = {id(x) for x in keep}
        for c in self.children.values():
            c.chan.close()
        for s in self.listeners.all_sockets() + [self.admin_sock, self.api_sock]:
            if s is not None and id(s) not in keep_ids:
                s.close()

    def _fork(self, kind: str, slot: int, keep: list, main) -> Child:
        sup_end, child_end = ipc.Channel.pair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._in_child(keep)
                sup_end.close()
                code = main(child_end)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        child_end.close()
        c = self.children[pid] = Child(kind, slot, pid, sup_end)
        return c

    def _spawn_worker(self, slot: int) -> None:
        socks = self.listeners.by_slot[slot]
        cfg, gen, path, region = self.cfg, self.generation, self.config_path, self.region
        c = self._fork("worker", slot, socks,
                       lambda ch: childmod.worker_main(slot, cfg, socks, region, ch, gen, path))
        self.slots[slot].pid = c.pid
        log.info("worker %d forked (pid %d)", slot, c.pid)

    def _spawn_control(self) -> None:
        sock, api, cfg, region = self.admin_sock, self.api_sock, self.cfg, self.region
        desired, gen = self.desired, self.generation
        c = self._fork("control", -1, [sock, api],
                       lambda ch: childmod.control_main(cfg, sock, region, ch, desired, gen, api_sock=api))
        self.control_pid = c.pid
        # draining state may have changed since; the Workers message carries it
        c.chan.send(ipc.Workers(self.desired, bool(self.stopping), self.generation))

    def _to_control(self) -> None:
        c = self.children.get(self.control_pid)
        if c is not None:
            c.chan.send(ipc.Workers(self.desired, bool(self.stopping), self.generation))

    def _workers(self) -> list[Child]:
        return [c for c in self.children.values() if c.kind == "worker"]

    # ------------------------------------------------------------------ reaping
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is None:
                continue
            self._read(c)           # a BootFailed sent just before exiting
            c.chan.close()
            code = os.waitstatus_to_exitcode(status)
            if c.kind == "worker":
                self._worker_exited(c, code)
            else:
                self._control_exited(c, code)

    def _backoff(self, fails: int) -> float:
        return 0.0 if fails <= 1 else min(0.25 * 2 ** (fails - 2), 15.0)

    def _worker_exited(self, c: Child, code: int) -> None:
        slot = c.slot
        self.region.fold_dead(slot)     # counters to the retired area, slot zeroed for the next one
        st = self.slots.get(slot)
        how = c.killed or describe_exit(code)
        if st is not None:
            st.pid = 0
        if self.stopping:
            log.info("worker %d (pid %d) stopped: %s", slot, c.pid, how)
            return
        if st is None or st.retiring:
            self.slots.pop(slot, None)
            self.listeners.close_slot(slot)
            log.info("worker %d (pid %d) retired: %s", slot, c.pid, how)
            return
        if code == childmod.BOOT_ERROR or (not c.ready and not self.announced):
            reason = c.boot_error or how
            st.boot_failures += 1
            if not self.announced or st.boot_failures >= MAX_BOOT_FAILURES:
                self._fatal(f"worker {slot} could not boot: {reason}")
                return
            log.error("worker %d (pid %d) could not boot (%d in a row): %s", slot, c.pid, st.boot_failures, reason)
        elif not c.killed:
            log.error("worker %d (pid %d) died: %s; respawning", slot, c.pid, how)
        now = time.monotonic()
        st.fails = st.fails + 1 if now - c.started < YOUNG else 1
        st.respawn_at = now + self._backoff(st.fails)
        w, restarts = self.m[0], self.m[1]
        w.inc(restarts)

    def _control_exited(self, c: Child, code: int) -> None:
        metrics = self.region.metrics
        metrics.fold_dead(metrics.control_slot)
        self.control_pid = 0
        if self.stopping:
            return
        how = c.killed or describe_exit(code)
        if code == childmod.BOOT_ERROR and not c.ready:
            self._fatal(f"the control process (admin listener) could not boot: {c.boot_error or how}")
            return
        if not c.killed:
            log.error("control process (pid %d) died: %s; respawning", c.pid, how)
        now = time.monotonic()
        self.control_fails = self.control_fails + 1 if now - c.started < YOUNG else 1
        self.control_respawn_at = now + self._backoff(self.control_fails)

    def _fatal(self, msg: str) -> None:
        print(f"fastgw: {msg}", file=sys.stderr, flush=True)
        log.critical("%s: stopping the gateway", msg)
        self.exit_code = EXIT_BOOT
        self._stop_fast()

    # ------------------------------------------------------------------ watching
    def _murder(self) -> None:
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        for c in list(self.children.values()):
            if c.killed:
                continue
            if c.kind == "worker":
                if c.ready:
                    age = (now_ns - self.region.workers.read(c.slot).heartbeat_ns) / 1e9
                    if age > self.hb_timeout:
                        self._kill(c, f"no heartbeat for {age:.1f}s")
                elif now - c.started > self.boot_timeout:
                    self._kill(c, f"not ready after {self.boot_timeout:g}s")
            elif c.ready and now - c.last_beat > self.hb_timeout:
                self._kill(c, f"no heartbeat for {now - c.last_beat:.1f}s")

    def _kill(self, c: Child, why: str) -> None:
        log.error("%s %d (pid %d): %s: killing it", c.kind, c.slot, c.pid, why)
        c.killed = f"killed by the supervisor ({why})"
        try:
            os.kill(c.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _manage(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if now >= self.deadline and not self.killed_all:
                self.killed_all = True
                for c in list(self.children.values()):
                    log.error("%s %d (pid %d) still running at the stop deadline: SIGKILL", c.kind, c.slot, c.pid)
                    try:
                        os.kill(c.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if not self._workers() and not self.control_stopped:
                self.control_stopped = True
                c = self.children.get(self.control_pid)
                if c is not None:
                    c.chan.send(ipc.Stop())
            return
        for slot, st in sorted(self.slots.items()):
            if not st.pid and not st.retiring and now >= st.respawn_at:
                self._spawn_worker(slot)
        if not self.control_pid and now >= self.control_respawn_at:
            self._spawn_control()
        if not self.announced:
            ready = [c for c in self._workers() if c.ready]
            if len(ready) >= self.desired:
                self.announced = True
                for host, port in self.listeners.addresses:
                    print(f"fastgw: listening on {host}:{port}", flush=True)

    # ------------------------------------------------------------------ stopping
    def _close_listeners(self) -> None:
        """Close the supervisor's copies; each socket lives on until its worker closes it."""
        self.listeners.close_all()

    def _stop_fast(self) -> None:
        first = self.stopping != "fast"
        self.stopping = "fast"
        self.deadline = min(self.deadline or float("inf"), time.monotonic() + FAST_STOP_GRACE)
        if not first:
            return
        self._close_listeners()
        for c in self.children.values():
            c.chan.send(ipc.Stop())
        self.control_stopped = True

    def _cleanup(self) -> None:
        for c in list(self.children.values()):
            try:
                os.kill(c.pid, signal.SIGKILL)
                os.waitpid(c.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            c.chan.close()
        self.children.clear()
        self.listeners.close_all()
        for s in (self.admin_sock, self.api_sock):
            if s is not None:
                s.close()
        self.audit.close()
        if self.wake_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1
        if self.region is not None:
            self.region.close()
            self.region = None

    # ------------------------------------------------------------------ signals
    def handle_term(self) -> None:
        """Graceful drain: readiness fails at once; serve drain.delay; finish in-flight by drain.timeout; exit 0.
        A second TERM stops fast."""
        if self.stopping:
            self.handle_int()
            return
        d = self.cfg.gateway.drain
        self.stopping = "drain"
        self.deadline = time.monotonic() + float(d.delay) + float(d.timeout) + DRAIN_GRACE
        log.info("draining: %d workers, delay %gs, timeout %gs", len(self._workers()), d.delay, d.timeout)
        self._to_control()
        self._close_listeners()
        for c in self._workers():
            c.chan.send(ipc.Drain(float(d.delay), float(d.timeout)))

    def handle_int(self) -> None:
        """Fast stop: every child closes its connections now (SIGKILL after 3 s); exit 0."""
        log.info("fast stop")
        self._stop_fast()

    def handle_hup(self) -> None:
        """Reload: validate the config file once; every child switches to that snapshot, or nothing changes."""
        self.reload("signal")

    def on_reloadrequest(self, c: Child, msg: ipc.ReloadRequest) -> None:
        c.chan.send(ipc.ReloadResult(msg.id, self.reload("admin", msg.client)))

    def reload(self, source: str, client: str = "") -> dict:
        """One reload attempt (``supervisor.reload.attempt``); its outcome document."""
        return attempt(self, source, client)

    def handle_usr1(self) -> None:
        """Reopen log files (after logrotate moved them)."""
        oplog.reopen()
        self.audit.reopen()
        for c in self.children.values():
            c.chan.send(ipc.ReopenLogs())

    def handle_ttin(self) -> None:
        """One worker more (a new slot with its own socket), up to the shared-memory slots."""
        if self.stopping:
            return
        free = [i for i in range(self.max_slots) if i not in self.slots]
        if not free:
            log.error("TTIN refused: all %d worker slots are in use (restart with more --workers)", self.max_slots)
            return
        slot = free[0]
        try:
            self.listeners.open_slot(slot)
        except BindError as e:
            log.error("TTIN refused: %s", e)
            return
        self.slots[slot] = Slot()
        self.desired += 1
        self._to_control()
        self._spawn_worker(slot)
        log.info("TTIN: %d workers", self.desired)

    def handle_ttou(self) -> None:
        """One worker less: the highest slot drains and its socket closes (see docs/operations.md)."""
        if self.stopping:
            return
        active = sorted(s for s, st in self.slots.items() if not st.retiring)
        if len(active) <= 1:
            log.error("TTOU refused: the last worker stays")
            return
        slot = active[-1]
        st = self.slots[slot]
        st.retiring = True
        self.desired -= 1
        self._to_control()
        self.listeners.close_slot(slot)      # the worker's copy keeps it open until it stops accepting
        if st.pid:
            c = self.children[st.pid]
            c.chan.send(ipc.Drain(0.0, float(self.cfg.gateway.drain.timeout)))
        else:
            self.slots.pop(slot)
        log.info("TTOU: %d workers", self.desired)

    def handle_chld(self) -> None:
        """A child exited: reaped on every loop turn."""
