"""Command line (L9): argparse.

    fastgw -c FILE                           run (the supervisor, N workers, the control process)
    fastgw -c FILE --check | -t              validate: errors with line:column and did-you-mean,
                                             warnings (each kind once); exit 0/1
    fastgw -c FILE --print-config            the effective config as YAML; secrets as ${VAR}
    fastgw diff OLD.yaml NEW.yaml            what a reload from OLD to NEW changes; exit 0/1/2
    fastgw replay --config NEW.yaml LOG      routing decisions NEW changes for a recorded access log
    fastgw routes -c FILE [--format markdown|json]   the routing table (fastgw.routing.table)
"""

from __future__ import annotations

import argparse
import os
import sys

from fastgw import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastgw",
        description="fastgw: an API gateway. Runs the data plane for the config file given with -c.",
        epilog="Commands: 'fastgw diff OLD.yaml NEW.yaml' (what a reload would change; exit 0 same, "
               "1 changed, 2 error), 'fastgw routes -c FILE [--format markdown|json]' "
               "(the routing table), 'fastgw replay --config NEW.yaml ACCESS.log [--old OLD.yaml]' (routing "
               "decisions NEW would change). Signals: TERM graceful drain, INT fast stop, HUP reload config, "
               "USR1 reopen logs, TTIN/TTOU one worker more/less. Docs: README.md and docs/.")
    p.add_argument("-c", "--config", default="config/gateway.yaml", metavar="FILE",
                   help="config file (YAML; default: %(default)s)")
    p.add_argument("--bind", metavar="HOST:PORT", action="append",
                   help="listen address, overrides gateway.host/port; port 0 picks a free port; repeatable")
    p.add_argument("-w", "--workers", type=int, metavar="N",
                   help="worker processes (default: gateway.workers, else the CPUs this process may use)")
    p.add_argument("-t", "--check", action="store_true",
                   help="validate the config and exit 0 (valid) or 1; errors as FILE:LINE:COLUMN: path: message")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config as YAML that --check accepts (secrets as ${VAR}) and exit")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="operational log level (default: monitoring.logging.level)")
    p.add_argument("--pid-file", metavar="FILE", help="write the supervisor's pid to FILE")
    p.add_argument("--version", action="version", version=f"fastgw {__version__}")
    return p


def _split_bind(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"fastgw: --bind expects HOST:PORT, got {s!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _diff_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastgw diff", description="What a reload from OLD to NEW would change "
                                "(the reload log's summary, referenced files included). Exit 0: no change, "
                                "1: changes, 2: an error.")
    p.add_argument("old", metavar="OLD.yaml")
    p.add_argument("new", metavar="NEW.yaml")
    args = p.parse_args(argv)
    from fastgw.tools import diffcmd
    return diffcmd.run(args.old, args.new)


def _replay_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastgw replay", description="Route every request of an access log "
                                "through NEW's router offline; report the decisions (route, service, method "
                                "allowed, auth required, route rate limit) that would change, and how many "
                                "cannot be decided without headers or query. Exit 0: none change, 1: some, "
                                "2: an error.")
    p.add_argument("--config", "-c", required=True, metavar="NEW.yaml")
    p.add_argument("--old", metavar="OLD.yaml", help="compare with OLD's decisions (default: the log's route)")
    p.add_argument("log", metavar="ACCESS.log")
    args = p.parse_args(argv)
    from fastgw.tools import replay
    return replay.run(args.config, args.log, args.old)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _grouped(warnings: list[str]) -> list[str]:
    """One line per distinct message: ``a.x, b.x: message`` (the same warning on three
    services is one thing to read, not three)."""
    by_msg: dict[str, list[str]] = {}
    for w in warnings:
        path, sep, msg = w.partition(": ")
        by_msg.setdefault(msg if sep else w, []).append(path if sep else "")
    return [f"{', '.join(p for p in paths if p)}: {msg}" if any(paths) else msg for msg, paths in by_msg.items()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["diff"]:
        return _diff_main(argv[1:])
    if argv[:1] == ["replay"]:
        return _replay_main(argv[1:])
    if argv[:1] == ["routes"]:
        from fastgw.routing.table import main as routes_main
        return routes_main(argv[1:])
    args = _parser().parse_args(argv)
    from fastgw.config import ConfigError, load_config

    try:
        cfg, warnings = load_config(args.config)
    except ConfigError as e:
        print(f"fastgw: {args.config}: invalid config ({_plural(len(e.errors), 'error')}):", file=sys.stderr)
        for line, where in zip(e.errors, e.where):
            at = f"{args.config}:{where[0]}:{where[1]}: " if where else ""
            print(f"  {at}{line}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fastgw: cannot read {args.config}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.check:
        from fastgw.supervisor.limits import warnings as nofile_warnings
        warnings = warnings + nofile_warnings(cfg, args.workers or cfg.gateway.workers or len(os.sched_getaffinity(0)))
        grouped = _grouped(warnings)
        for w in grouped:
            print(f"warning: {w}", file=sys.stderr)
        print(f"fastgw: {args.config}: config OK" + (f" ({_plural(len(grouped), 'warning')})" if grouped else ""))
        return 0
    if args.print_config:
        from fastgw.config import parse_yaml
        from fastgw.tools.printcfg import render
        with open(args.config, "rb") as f:
            raw = parse_yaml(f.read(), args.config)
        sys.stdout.write(render(cfg, raw))
        return 0
    from fastgw.obs import oplog
    try:
        oplog.configure_from(cfg, args.log_level)
    except OSError as e:
        print(f"fastgw: monitoring.logging.output: cannot open {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1
    import logging
    for w in _grouped(warnings):        # in the operational log, where the reload's warnings go too
        logging.getLogger("fastgw").warning("config: %s", w)
    binds = [_split_bind(b) for b in args.bind] if args.bind else [(cfg.gateway.host, cfg.gateway.port)]
    workers = args.workers or cfg.gateway.workers or len(os.sched_getaffinity(0))
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        try:
            from fastgw.supervisor.arbiter import Arbiter
        except ImportError:
            Arbiter = None
        if Arbiter is not None:
            return Arbiter(cfg, args.config, binds, workers, warnings=warnings).run()
        return _run_standalone(cfg, args.config, binds)
    finally:
        if args.pid_file:
            _remove_pid_file(args.pid_file)


def _remove_pid_file(path: str) -> None:
    """Remove the pid file if it is still ours (a newer instance may have rewritten it)."""
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass


def _run_standalone(cfg, path: str, binds) -> int:
    """One worker in this process (until the supervisor is built, and for debugging)."""
    from fastgw.runtime.worker import Worker, bind_socket

    socks = []
    for host, port in binds:
        try:
            s = bind_socket(host, port)
        except OSError as e:
            print(f"fastgw: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
            return 1
        socks.append(s)
        h, p = s.getsockname()[:2]
        print(f"fastgw: listening on {h}:{p}", flush=True)
    return Worker(cfg, socks, config_path=path).run()


if __name__ == "__main__":
    raise SystemExit(main())
