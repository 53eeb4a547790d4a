"""Messages between the supervisor and its children, and the channel that carries them.

Each child (worker or control process) has one ``socketpair``: the supervisor keeps one
end, the child the other.  Messages are msgspec Structs in one tagged union
(``Message``), encoded with msgpack and framed with a 4-byte big-endian length; no
stringly typed commands (STYLE.md).  Nothing per request ever crosses a channel: they
carry life-cycle events and the config snapshot.

supervisor -> child: ``Reload`` (generation + the validated ``Config`` snapshot, encoded
once and sent as the same bytes to every child, so all switch to the same snapshot),
``Drain``, ``Stop``, ``ReopenLogs``, ``Workers`` (to the control process: what readiness
needs to know).
child -> supervisor: ``Ready``, ``BootFailed``, ``Applied``, ``ApplyFailed``, ``Beat``
(the control process's heartbeat; workers beat in shared memory), ``Drained`` (a
worker's drain counts, just before it exits).

``Channel`` is non-blocking both ways and never blocks its owner: the supervisor's loop
must not hang on a stopped child, so unsent bytes wait in an outbox flushed when the
socket is writable.  A closed peer shows as ``closed`` (EOF): a worker whose supervisor
died drains and exits.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Union

import msgspec

from fastgw.config.base import dec_hook
from fastgw.config.root import Config

MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct("!I")


class Ready(msgspec.Struct, tag="ready"):
    """The child serves: a worker accepts on its sockets, the control process on the admin port."""
    slot: int
    pid: int
    host: str = ""
    port: int = 0


class BootFailed(msgspec.Struct, tag="boot_failed"):
    """The child could not start; ``reason`` is shown to the operator as is."""
    slot: int
    reason: str


class Reload(msgspec.Struct, tag="reload"):
    """Switch to this validated snapshot in place."""
    generation: int
    config: Config


class Applied(msgspec.Struct, tag="applied"):
    generation: int


class ApplyFailed(msgspec.Struct, tag="apply_failed"):
    generation: int
    error: str


class Drain(msgspec.Struct, tag="drain"):
    """Graceful stop: readiness fails now, accept ``delay`` more seconds, finish by ``timeout``."""
    delay: float
    timeout: float


class Stop(msgspec.Struct, tag="stop"):
    """Fast stop: close everything now."""


class ReopenLogs(msgspec.Struct, tag="reopen_logs"):
    """logrotate moved the files: reopen them."""


class Workers(msgspec.Struct, tag="workers"):
    """To the control process: the workers readiness expects, and whether the gateway drains."""
    desired: int
    draining: bool
    generation: int


class Drained(msgspec.Struct, tag="drained"):
    """A worker finished its drain: connections closed cleanly and aborted at the timeout."""
    slot: int
    drained: int
    aborted: int


class Beat(msgspec.Struct, tag="beat"):
    """The control process is alive (once per tick)."""


class ReloadRequest(msgspec.Struct, tag="reload_request"):
    """From the control process (``POST /admin/reload``): reload as on HUP, answer ``ReloadResult``."""
    id: int
    client: str = ""


class ReloadResult(msgspec.Struct, tag="reload_result"):
    """The supervisor's answer to ``ReloadRequest`` ``id``: the reload's outcome document."""
    id: int
    result: dict


Message = Union[Ready, BootFailed, Reload, Applied, ApplyFailed, Drain, Stop, ReopenLogs, Workers, Beat,
                ReloadRequest, ReloadResult, Drained]


def _enc_hook(obj):
    # config scalars are subclasses of float/int/str (Duration, Size, Secret)
    for base in (float, int, str):
        if isinstance(obj, base):
            return base(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(Message, dec_hook=dec_hook)


def encode(msg) -> bytes:
    """One framed message (length prefix included)."""
    body = _encoder.encode(msg)
    return _LEN.pack(len(body)) + body


def decode(body: bytes):
    return _decoder.decode(body)


class Channel:
    """One end of a child's socketpair, non-blocking, with an outbox and a frame reader."""

    __slots__ = ("sock", "outbox", "inbox", "closed")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.outbox = bytearray()
        self.inbox = bytearray()
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """(supervisor end, child end)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg) -> None:
        self.send_raw(encode(msg))

    def send_raw(self, frame: bytes) -> None:
        """Queue an already framed message (the same bytes may go to many channels)."""
        if self.closed:
            return
        self.outbox += frame
        self.flush()

    def flush(self) -> bool:
        """Write what the socket takes now; True when the outbox is empty."""
        while self.outbox and not self.closed:
            try:
                n = self.sock.send(self.outbox)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            except OSError:
                self.closed = True
                self.outbox.clear()
                return True
            del self.outbox[:n]
        return not self.outbox

    def send_blocking(self, msg, timeout: float = 2.0) -> None:
        """Send now, waiting up to ``timeout`` (a child about to exit)."""
        self.outbox += encode(msg)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(bytes(self.outbox))
            self.outbox.clear()
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)

    def receive(self) -> list:
        """Every complete message readable now (sets ``closed`` at EOF)."""
        while not self.closed:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self.inbox += data
        out = []
        buf = self.inbox
        while len(buf) >= 4:
            n = _LEN.unpack_from(buf, 0)[0]
            if n > MAX_FRAME:
                self.closed = True
                break
            if len(buf) < 4 + n:
                break
            body = bytes(buf[4:4 + n])
            del buf[:4 + n]
            out.append(decode(body))
        return out

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
