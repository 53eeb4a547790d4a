"""Buffered JSON-lines output (L4): access log and audit log.

Lines are appended to a buffer and written on the worker tick (or when the buffer passes
``flush_at``), so a request costs no syscall for logging.  Each ``os.write`` carries whole
lines only: on a regular file opened with O_APPEND a write is atomic with respect to the
end of file, and on a pipe (stdout under a process manager) writes of at most PIPE_BUF
bytes are atomic, so the buffer is cut at line boundaries into pieces of at most PIPE_BUF
when the target is a pipe.  Lines from several workers sharing one stdout never interleave.
``reopen()`` (SIGUSR1) reopens a file target for logrotate.

Two ways in, kept in order: ``write(line)`` queues an encoded line (audit log), and
``recs.append(record)`` queues an object (a ``msgspec`` Struct: the access log) that is
encoded at flush, all pending records in one ``encode_lines`` call; ``recs`` is the same
list object for the buffer's life (the access log holds it) and is flushed once it holds
``max_recs`` records.  A record that cannot be encoded is dropped, with a warning.
"""

from __future__ import annotations

import logging
import os
import select
import stat

import msgspec

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)

_encoder = msgspec.json.Encoder()
log = logging.getLogger(__name__)


class LogBuffer:
    def __init__(self, target: str, flush_at: int = 64 * 1024, max_recs: int = 256) -> None:
        self.target = target
        self.flush_at = flush_at
        self.buf: list[bytes] = []
        self.size = 0
        self.recs: list = []        # records to encode at flush (never replaced: see above)
        self.max_recs = max_recs
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
        if self.recs:
            self._encode_recs()  # they came first
        self.buf.append(line)
        self.buf.append(b"\n")
        self.size += len(line) + 1
        if self.size >= self.flush_at:
            self.flush()

    def _encode_recs(self) -> None:
        recs = self.recs
        try:
            data = _encoder.encode_lines(recs)
        except Exception:  # e.g. a lone surrogate in a token's subject: find the culprit(s)
            parts = []
            for r in recs:
                try:
                    parts.append(_encoder.encode(r) + b"\n")
                except Exception as e:
                    log.warning("log record dropped: cannot encode it: %s", e)
            data = b"".join(parts)
        recs.clear()
        self.buf.append(data)
        self.size += len(data)

    def flush(self) -> None:
        if self.recs:
            self._encode_recs()
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
