"""The lingering close of a client connection (L2; ``http.protocol`` rule 6).

An answer sent before the request was read to its end (413 on an upload, 401, 408, a
parse error) must stay readable: closing with unread input makes the kernel send RST,
and a client still writing its body loses the answer.  ``start(proto)`` shuts down the
write side after the answer and puts a ``Linger`` in the protocol's ``tunnel`` slot,
which reads and discards input until the client closes, ``lingering_time`` passes or
``lingering_size`` bytes were discarded.  The connection stays counted by the handler
(``linger_start``/``linger_done``) until it ends.
"""

from __future__ import annotations

from fastgw.http.conninfo import T_LINGER, T_NONE


def start(proto) -> None:
    """Lingering close (``http.protocol`` rule 6): the answer is written; shut down the write side, then
    read and discard until the client closes, ``lingering_time`` passes or
    ``lingering_size`` bytes were discarded."""
    t = proto.transport
    if t is None or proto.closed:
        return
    proto.closed = True  # nothing more is parsed or written
    proto.queue.clear()
    proto.backlog = None
    if not t.can_write_eof():  # (TLS: no half-close; a plain close, as before)
        t.close()
        return
    try:
        t.write_eof()  # after the answer still buffered
    except (OSError, RuntimeError):
        t.close()
        return
    proto.tunnel = Linger(proto, proto.info.linger_size)  # data_received feeds it
    proto.dl.set(T_LINGER, proto.info.t_linger)
    proto.handler.linger_start(proto)
    if proto.paused:
        proto.paused = 0
        t.resume_reading()


class Linger:
    """The discarding reader of a lingering close (rule 6), in the protocol's ``tunnel``
    slot, so ``data_received`` needs no extra test: ``write`` counts and drops the bytes."""

    __slots__ = ("proto", "left", "done")

    def __init__(self, proto, size: int) -> None:
        self.proto = proto
        self.left = size
        self.done = False

    def write(self, data) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.end("size")

    def end(self, why: str) -> None:
        """The lingering close ends: ``why`` is client (it closed), time or size."""
        if self.done:
            return
        self.done = True
        p = self.proto
        p.dl.kind = T_NONE
        t = p.transport
        if t is not None:
            # after the client's own close a plain close; past a bound, abort: the client
            # had lingering_time to read the answer
            if why == "client":
                t.close()
            else:
                t.abort()
        p.handler.linger_done(p, why)

    # (the rest of the tunnel interface the protocol calls)
    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.proto.handler.linger_done(self.proto, "client")

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None
