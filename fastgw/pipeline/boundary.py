"""The protocol <-> engine boundary, written down (L4).

Four ``typing.Protocol`` classes list every call and attribute one side uses of the
other, so a reader (or a type checker) sees what a protocol may ask of the engine and
what the engine may ask of a protocol, and nothing else:

    http/protocol.DownstreamProtocol --ClientHandler--> pipeline/engine.Engine
    pipeline/engine, pipeline/proxy  --ClientSide-----> DownstreamProtocol
    upstream/client.UpstreamProtocol --UpstreamHandler-> pipeline/proxy.Proxy
    pipeline/proxy, pipeline/engine  --UpstreamSide---> UpstreamProtocol

The runtime checks nothing here (no ``isinstance`` on the hot path);
``tests/proxy/test_pipeline_boundary.py`` checks that the real classes offer every member.
"""

from __future__ import annotations

from typing import Protocol


class ClientHandler(Protocol):
    """What the client protocol reports to (the engine).  ``req`` is an
    ``http.request.Request``; the engine's object for it is ``req.exchange``."""

    def connection_made(self, proto: "ClientSide") -> None:
        """A client connected (the engine counts it, and may refuse it: 503 and close)."""

    def connection_lost(self, proto: "ClientSide", req) -> None:
        """The connection is gone; ``req`` is the request in flight (or None): give its
        upstream connection back, log it as a client abort."""

    def dispatch(self, proto: "ClientSide", req, body: list | None) -> None:
        """A request whose head parsed cleanly, with the body bytes already parsed."""

    def on_body(self, proto: "ClientSide", req, data: bytes) -> None:
        """More body of the request in flight."""

    def on_body_end(self, proto: "ClientSide", req) -> None:
        """The body of the request in flight is complete."""

    def linger_start(self, proto: "ClientSide") -> None:
        """A lingering close starts (the connection still counts as open)."""

    def linger_done(self, proto: "ClientSide", end: str) -> None:
        """A lingering close ended: ``end`` is client, time or size."""

    def body_timeout(self, proto: "ClientSide", req) -> None:
        """The body did not arrive within ``timeouts.request_body``."""

    def abort_current(self, proto: "ClientSide", kind: str) -> None:
        """The body of the request in flight is malformed; the connection aborts next."""

    def parse_error(self, proto: "ClientSide", kind: str, detail: str) -> None:
        """A malformed or timed-out head: answer (the error kind) and close."""

    def downstream_paused(self, proto: "ClientSide", paused: bool) -> None:
        """The client's socket buffer is full (or drained): pause (resume) the upstream."""

    def finish(self, proto: "ClientSide", req) -> None:
        """The response to ``req`` is written: the logging phase."""


class ClientSide(Protocol):
    """What the engine may ask of a client connection (``DownstreamProtocol``)."""

    peer_ip: str            # the socket (or PROXY-protocol) peer address
    cur: object             # the Request in flight, or None
    cur_complete: bool      # its whole body was read
    closed: bool
    draining: bool          # this connection closes after its response
    write_paused: bool      # the client's socket buffer is full
    transport: object       # the socket's transport (None until made): a hot path may write
                            # to it itself, when not ``closed`` (``write`` without the call)

    def write(self, data: bytes) -> None:
        """Send bytes to the client (dropped once the connection is closed)."""

    def request_done(self, req, keep_alive: bool) -> None:
        """The response to ``req`` is complete; ``keep_alive`` is ``heads.keep_client``'s
        decision (the protocol still closes after an unread body)."""

    def close(self) -> None:
        """Close after the bytes written so far."""

    def abort(self) -> None:
        """Reset now (the response cannot be completed honestly)."""

    def pause_for(self, reason: int) -> None:
        """Stop reading the client for ``reason`` (a ``PAUSE_*`` bit)."""

    def resume_for(self, reason: int) -> None:
        """``reason`` no longer holds; reading resumes when no other reason does."""

    def start_tunnel(self, upstream_transport) -> None:
        """After an upstream 101: relay bytes both ways."""


class UpstreamHandler(Protocol):
    """What the upstream client reports to (``pipeline.proxy.Proxy``).  ``up.ctx`` is
    the exchange the connection serves, ``up.down`` its client connection."""

    def upstream_head(self, up: "UpstreamSide", status: int, reason: bytes, block: bytes,
                      keep_alive: bool) -> tuple:
        """The response head: ``(head bytes for the client, framing)``, framing being the
        ``RECHUNK`` / ``CLOSE_DELIMITED`` bits of ``http.wire``.  A handler that drops
        the response instead (a 5xx retried elsewhere) releases the connection as not
        reusable first; the client sees itself closed and forwards nothing."""

    def upstream_done(self, up: "UpstreamSide", reusable: bool) -> None:
        """The response is complete and flushed; ``reusable``: the connection may be pooled."""

    def upstream_error(self, up: "UpstreamSide", err) -> None:
        """A ``GatewayError`` before or after the head (``up.head_sent`` says which)."""

    def upstream_paused(self, up: "UpstreamSide", paused: bool) -> None:
        """The upstream's socket buffer is full (or drained): pause (resume) the client."""

    def upstream_upgraded(self, up: "UpstreamSide", rest: bytes) -> None:
        """The upstream answered 101: make the tunnel; ``rest`` are bytes after the head."""


class UpstreamSide(Protocol):
    """What the engine may ask of an upstream connection (``UpstreamProtocol``)."""

    pool: object            # its Pool: ``pool.release(conn, reusable)`` is the one way back
    ctx: object             # the exchange it serves
    down: object            # the client connection it answers
    handler: object         # None once the exchange ended (done, failed or tunnelled)
    head_sent: bool         # the response head went to the client
    transport: object
    state: int              # 0 (IDLE): parked and usable (``Proxy.forward`` takes an idle
                            # connection from ``pool.idle`` itself, ``Pool.acquire_idle``'s test)
    # ``Proxy.upstream_done`` parks the usual keep-alive connection itself
    # (``Pool.release``'s parking written out): these are what that parking sets or reads
    read_paused: bool       # reading paused by a slow client (resumed before parking)
    reused: bool            # served an exchange before (a failure on it may be retried)
    idle_since: float       # loop time it was parked
    dl: object              # its one Deadline (the idle timeout while parked)

    def send(self, handler: UpstreamHandler, down: ClientSide, x, data: bytes, route) -> None:
        """Start the exchange: write ``data`` (head and any body at hand); the route
        gives the timeouts and the response body filter."""

    def write(self, data: bytes) -> None:
        """More request body."""

    def request_sent(self) -> None:
        """The request body ended: the upstream ``timeout`` starts now."""

    def pause_reading(self, paused: bool) -> None:
        """Back-pressure from the client."""

    def start_tunnel(self, down: ClientSide) -> None:
        """After a 101: relay bytes with the client, no handler, no deadline."""
