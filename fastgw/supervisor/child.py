"""What runs in a child right after ``fork`` (L8): the worker and control entry points.

The supervisor forks and calls ``worker_main`` or ``control_main`` in the child, which
never returns to the supervisor's code: the caller ``os._exit``s with the returned
status.

Preload (like gunicorn's ``--preload``): before its first fork the supervisor calls
``preload``, which imports the modules a child needs (the runtime, the middlewares,
uvloop, httptools), so a respawn is a fork plus the worker's own set-up instead of half a
second of imports.  Importing creates no event loop, thread or socket (the architecture
test checks every module for that, and ``test_supervisor_units`` checks ``preload``);
loops, sockets to upstreams and threads exist only in children.  Importing
``fastgw.supervisor`` alone still imports none of them.

Exit statuses: 0 (stopped or drained), ``BOOT_ERROR`` (could not start: bad TLS files, a
log file that cannot be opened, a config the runtime cannot build; the supervisor stops
the gateway instead of respawning), anything else (a crash: respawned with backoff).

The child's channel end is read on the child's loop; each message is dispatched to an
``on_<tag>`` function.  EOF on the channel means the supervisor is gone: the worker
drains at once (no delay) and exits, so no orphan keeps serving with stale config.
"""

from __future__ import annotations

import logging
import os
import traceback

from fastgw.supervisor import ipc

log = logging.getLogger("fastgw")

BOOT_ERROR = 3


PRELOAD = (
    "uvloop", "httptools", "orjson",
    "fastgw.runtime.worker", "fastgw.runtime.control", "fastgw.shm.workers", "fastgw.supervisor.metrics_store",
)


def preload() -> list[str]:
    """Import what a child needs before forking; returns what could not be imported.

    A module that fails here is left for the child to import (and report as a boot
    error with its usual message), so preloading never changes what fails, only when.
    """
    import importlib

    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:
            failed.append(f"{name}: {e}")
    try:
        from fastgw.middleware.registry import builders
        builders()                  # imports every registered middleware module
    except Exception as e:
        failed.append(f"middlewares: {e}")
    return failed


def _describe(e: BaseException) -> str:
    if type(e).__name__ == "BootError":          # fastgw.runtime.worker.BootError: already worded
        return str(e)
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or e}: {e.filename}"
    return f"{type(e).__name__}: {e}"


def _follow_logging(cfg) -> None:
    """The operational log follows a reload's ``monitoring.logging`` (fastgw.obs.oplog)."""
    from fastgw.obs import oplog
    try:
        oplog.configure_from(cfg)
    except OSError as e:
        log.error("monitoring.logging.output: cannot open %s: %s", e.filename, e.strerror or e)


def _read_channel(chan: ipc.Channel, handlers: dict, on_eof) -> None:
    try:
        msgs = chan.receive()
    except Exception as e:       # a message this build cannot decode: a bug, say so and go on
        log.error("bad message from the supervisor: %s", e)
        msgs = []
    for msg in msgs:
        fn = handlers.get(type(msg))
        if fn is None:
            log.warning("unexpected %s message ignored", type(msg).__name__)
            continue
        fn(msg)
    if chan.closed:
        on_eof()


def worker_main(slot: int, cfg, sockets, region, chan: ipc.Channel, generation: int,
                config_path: str | None) -> int:
    """Run worker ``slot`` until it stops; the exit status for ``os._exit``."""
    ws = region.workers.slot(slot)
    ws.boot(generation)
    started = False
    try:
        from fastgw.runtime.worker import Worker
        from fastgw.shm.workers import BOOTING, DRAINING, READY
        from fastgw.supervisor.metrics_store import ShmStore

        store = ShmStore(region.metrics.writer(slot))
        w = Worker(cfg, sockets, worker_id=slot, shm=region, metrics_store=store,
                   config_path=config_path, standalone=False)
        w.generation = generation

        def drain(delay: float, timeout: float) -> None:
            if not w.draining:
                w.loop.create_task(w.drain(delay, timeout))

        def on_reload(m: ipc.Reload) -> None:
            _follow_logging(m.config)
            if w.apply_config(m.config, m.generation):
                ws.set_generation(m.generation)
                chan.send(ipc.Applied(m.generation))
            else:
                chan.send(ipc.ApplyFailed(m.generation, "the worker could not build this config (see its log)"))

        handlers = {
            ipc.Reload: on_reload,
            ipc.Drain: lambda m: drain(m.delay, m.timeout),
            ipc.Stop: lambda m: w.handle_int(),
            ipc.ReopenLogs: lambda m: w.handle_usr1(),
        }

        def on_eof() -> None:
            w.loop.remove_reader(chan.fileno())
            log.error("worker %d: the supervisor is gone; draining", slot)
            drain(0.0, float(w.config.gateway.drain.timeout))

        def ready() -> None:
            ws.set_state(READY)
            chan.send(ipc.Ready(slot, os.getpid()))

        def on_start(worker) -> None:
            nonlocal started
            started = True
            worker.loop.add_reader(chan.fileno(), _read_channel, chan, handlers, on_eof)
            # announced from inside the running loop: uvloop only listens for signals while
            # it runs, so a signal sent the moment a worker looks ready is not lost
            worker.loop.call_soon(ready)

        waiting = [False]       # logged "waiting for the first JWKS fetch"

        def tick() -> None:
            ws.heartbeat()
            store.publish(ws)
            if started and not w.draining:
                # readiness that middlewares contribute (the first JWKS fetch): a worker
                # that cannot verify tokens yet shows as not ready in /readyz
                want = READY if all(check() for check in w.engine.app.ready_checks) else BOOTING
                if region.workers.read(slot).state != want:
                    ws.set_state(want)
                    if (want == READY) == waiting[0]:
                        waiting[0] = want != READY
                        log.info("worker %d: %s", slot, "ready: the JWKS key sets are fetched" if want == READY
                                 else "waiting for the first JWKS fetch (auth.jwks): not ready until it succeeds")
            chan.flush()

        w.start_hooks.append(on_start)
        w.tick_hooks.append(tick)
        w.drain_hooks.append(lambda: ws.set_state(DRAINING))
        code = w.run()
        store.publish(ws)
        if w.drain_counts is not None:
            chan.send_blocking(ipc.Drained(slot, *w.drain_counts))
        return code
    except BaseException as e:
        if started:
            log.error("worker %d crashed: %s\n%s", slot, e, traceback.format_exc())
            return 1
        reason = _describe(e)
        log.debug("worker %d boot failure:\n%s", slot, traceback.format_exc())
        chan.send_blocking(ipc.BootFailed(slot, reason))
        return BOOT_ERROR


def control_main(cfg, sock, region, chan: ipc.Channel, desired: int, generation: int, api_sock=None) -> int:
    """Run the control process until it stops; the exit status for ``os._exit``."""
    started = False
    try:
        from fastgw.runtime.control import Control

        c = Control(cfg, sock, region, desired=desired, generation=generation, api_sock=api_sock)
        if region is not None:  # the control process's metric area (revocation sync errors)
            from fastgw.obs.metrics import Metrics
            from fastgw.supervisor.metrics_store import ShmStore

            c.metrics = Metrics(ShmStore(region.metrics.writer(region.metrics.control_slot)))
        c.to_supervisor = lambda rid, client: chan.send(ipc.ReloadRequest(rid, client))

        def on_reload(m: ipc.Reload) -> None:
            _follow_logging(m.config)
            c.apply_config(m.config, m.generation)
            chan.send(ipc.Applied(m.generation))

        handlers = {
            ipc.Reload: on_reload,
            ipc.Workers: lambda m: c.set_workers(m.desired, m.draining, m.generation),
            ipc.Stop: lambda m: c.stop(),
            ipc.Drain: lambda m: c.set_workers(c.desired, True, c.generation),
            ipc.ReopenLogs: lambda m: c.handle_usr1(),
            ipc.ReloadResult: lambda m: c.on_reload_result(m.id, m.result),
        }

        def on_eof() -> None:
            c.loop.remove_reader(chan.fileno())
            c.stop()

        def on_start(ctl) -> None:
            nonlocal started
            started = True
            ctl.loop.add_reader(chan.fileno(), _read_channel, chan, handlers, on_eof)
            host, port = sock.getsockname()[:2]
            ctl.loop.call_soon(chan.send, ipc.Ready(-1, os.getpid(), host, port))

        def tick() -> None:
            chan.send(ipc.Beat())

        c.start_hooks.append(on_start)
        c.tick_hooks.append(tick)
        return c.run()
    except BaseException as e:
        if started:
            log.error("control process crashed: %s\n%s", e, traceback.format_exc())
            return 1
        chan.send_blocking(ipc.BootFailed(-1, _describe(e)))
        return BOOT_ERROR
