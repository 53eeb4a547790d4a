"""The operational log: the gateway's own log lines, in every process (L4).

``monitoring.logging`` decides it: ``level``, ``format`` (``json``: one orjson object per
line, ``{"ts", "level", "pid", "msg"}`` plus the exception text when there is one;
``text``: ``2026-12-06 17:00:00,123 fastgw[PID] INFO message``) and ``output``
(``stdout``, ``stderr`` or a file path, opened O_APPEND so every process can share it).

Rules:

1. One handler on the ``fastgw`` logger, configured by ``configure()`` in the supervisor
   before it forks; children inherit it.  ``configure()`` is idempotent: called again
   with the same settings (a reload that did not touch ``monitoring.logging``) it keeps
   the open file; with new ones it swaps the handler.  Every process calls it on reload
   so they all follow the same settings.
2. ``reopen()`` (USR1, in each process) closes and reopens a file output, for logrotate;
   stdout/stderr are left alone.
3. Nothing here imports an event loop: the supervisor uses it.
"""

from __future__ import annotations

import logging
import os
import sys

import orjson

LOGGER = "fastgw"
_TEXT = "%(asctime)s fastgw[%(process)d] %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (epoch seconds), level, pid, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 6), "level": record.levelname.lower(), "pid": record.process,
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class OutputHandler(logging.Handler):
    """Writes each record as one line with a single ``os.write`` on ``stdout``, ``stderr``
    or an O_APPEND file (so lines of several processes never interleave)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fd = -1
        self._open()

    def _open(self) -> None:
        if self.target == "stdout":
            self.fd = 1
        elif self.target == "stderr":
            self.fd = 2
        else:
            self.fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @property
    def owned(self) -> bool:
        return self.target not in ("stdout", "stderr")

    def reopen(self) -> None:
        if self.owned:
            old = self.fd
            self._open()
            try:
                os.close(old)
            except OSError:
                pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            if self.fd in (1, 2):       # keep ordering with print() to the same stream
                (sys.stdout if self.fd == 1 else sys.stderr).flush()
            os.write(self.fd, data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        super().close()


_current: tuple[str, str] | None = None
_handler: OutputHandler | None = None


def configure(level: str = "info", fmt: str = "text", output: str = "stderr") -> None:
    """Point the ``fastgw`` logger at ``output`` in ``fmt`` at ``level`` (idempotent)."""
    global _current, _handler
    root = logging.getLogger(LOGGER)
    root.setLevel(level.upper())
    root.propagate = False
    if _handler is not None and _current == (fmt, output) and root.handlers == [_handler]:
        return
    h = OutputHandler(output)       # raises OSError when the file cannot be opened: the caller says so
    h.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    old = _handler
    root.handlers[:] = [h]
    _handler, _current = h, (fmt, output)
    if old is not None:
        old.close()


_level_override: str | None = None


def configure_from(cfg, level: str | None = None) -> None:
    """``configure`` from a Config's ``monitoring.logging``; ``level`` (``--log-level``)
    overrides the file's level, now and on every later reload."""
    global _level_override
    if level:
        _level_override = level
    lg = cfg.monitoring.logging
    configure(_level_override or lg.level, lg.format, lg.output)


def reopen() -> None:
    """Reopen a file output (USR1 after logrotate moved it)."""
    if _handler is not None:
        _handler.reopen()
