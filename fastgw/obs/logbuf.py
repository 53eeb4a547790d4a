"""Buffered JSON-lines output (L4): access log and audit log.

Lines are appended to a buffer and written on the worker tick (or when the buffer passes
``flush_at``), so a request costs no syscall for logging.  Each ``os.write`` carries whole
lines only: on a regular file opened with O_APPEND a write is atomic with respect to the
end of file, and on a pipe (stdout under a process manager) writes of at most PIPE_BUF
bytes are atomic, so the buffer is cut at line boundaries into pieces of at most PIPE_BUF
when the target is a pipe.  Lines from several workers sharing one stdout never interleave.
``reopen()`` (SIGUSR1) reopens a file target for logrotate.
"""

from __future__ import annotations

import os
import select
import stat

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


class LogBuffer:
    def __init__(self, target: str, flush_at: int = 64 * 1024) -> None:
        self.target = target
        self.flush_at = flush_at
        self.buf: list[bytes] = []
        self.size = 0
        self.fd = -1
        self.owned = False
        self.is_pipe = False
        self._open()

    def _open(self) -> None:
        t = self.target
        if t == "stdout":
            self.fd, self.owned = 1, False
        elif t == "stderr":
            self.fd, self.owned = 2, False
        else:
            self.fd = os.open(t, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.owned = True
        try:
            mode = os.fstat(self.fd).st_mode
            self.is_pipe = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        except OSError:
            self.is_pipe = True

    def reopen(self) -> None:
        self.flush()
        if self.owned:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._open()

    def write(self, line: bytes) -> None:
        """Queue one line (without its newline)."""
        self.buf.append(line)
        self.buf.append(b"\n")
        self.size += len(line) + 1
        if self.size >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        buf, self.buf, self.size = self.buf, [], 0
        data = b"".join(buf)
        try:
            if self.is_pipe and len(data) > PIPE_BUF:
                self._write_pieces(data)
            else:
                self._write_all(data)
        except OSError:
            pass  # a full disk or closed pipe must not take the worker down

    def _write_pieces(self, data: bytes) -> None:
        start = 0
        n = len(data)
        while start < n:
            end = min(start + PIPE_BUF, n)
            if end < n:
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or n
            self._write_all(data[start:end])
            start = end

    def _write_all(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            try:
                k = os.write(self.fd, mv)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            mv = mv[k:]

    def close(self) -> None:
        self.flush()
        if self.owned:
            try:
                os.close(self.fd)
            except OSError:
                pass
