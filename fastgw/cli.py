"""Command line (L9): flags only, argparse.

    fastgw -c FILE                 run (one worker in this process, or N under the supervisor)
    fastgw -c FILE --check | -t    validate, print errors and warnings, exit 0/1
    fastgw -c FILE --print-config  print the effective config, secrets redacted
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
        epilog="Signals: TERM graceful drain, INT fast stop, HUP reload config, USR1 reopen logs, "
               "TTIN/TTOU one worker more/less. Docs: README.md and docs/.")
    p.add_argument("-c", "--config", default="config/gateway.yaml", metavar="FILE",
                   help="config file (YAML; default: %(default)s)")
    p.add_argument("--bind", metavar="HOST:PORT", action="append",
                   help="listen address, overrides gateway.host/port; port 0 picks a free port; repeatable")
    p.add_argument("-w", "--workers", type=int, metavar="N",
                   help="worker processes (default: gateway.workers, else the CPUs this process may use)")
    p.add_argument("-t", "--check", action="store_true", help="validate the config and exit 0 (valid) or 1")
    p.add_argument("--print-config", action="store_true", help="print the effective config (secrets redacted) and exit")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastgw.config import ConfigError, load_config

    try:
        cfg, warnings = load_config(args.config)
    except ConfigError as e:
        print(f"fastgw: {args.config}: invalid config:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fastgw: cannot read {args.config}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.check:
        from fastgw.supervisor.limits import warnings as nofile_warnings
        warnings = warnings + nofile_warnings(cfg, args.workers or cfg.gateway.workers or len(os.sched_getaffinity(0)))
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"fastgw: {args.config}: config OK" + (f" ({len(warnings)} warnings)" if warnings else ""))
        return 0
    if args.print_config:
        import orjson

        from fastgw.config.redact import to_printable
        sys.stdout.write(orjson.dumps(to_printable(cfg), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for w in warnings:
        print(f"fastgw: warning: {w}", file=sys.stderr)

    _configure_logging(args.log_level or cfg.monitoring.logging.level)
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
            return Arbiter(cfg, args.config, binds, workers).run()
        return _run_standalone(cfg, args.config, binds)
    finally:
        if args.pid_file:
            _remove_pid_file(args.pid_file)


def _configure_logging(level: str) -> None:
    """The operational log on stderr; %(process)d so each child logs under its own pid.
    (Here rather than in the runtime: the supervisor never imports the event-loop modules.)"""
    import logging

    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s fastgw[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("fastgw")
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    root.propagate = False


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
