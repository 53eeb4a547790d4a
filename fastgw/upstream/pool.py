"""Keep-alive connection pools, one per pool identity (L3).

A pool belongs to a ``Peer`` (``upstream.peer``): scheme, host, port and TLS settings.
Per-service addressing (base path, Host header) lives on ``Instance`` and never here, so
services that reach one host:port share a pool and keep their own paths.

Rules (STYLE.md item 9, aiohttp's connector and Pingora's pooling notes):
1. Fast path first: an idle connection is taken before any machinery is set up; idle
   connections are reused newest-first (a stack), so cold ones age out by idle timeout.
2. ``open`` counts connections that exist or are being connected; the cap
   (``max_connections``) applies to that count, so a burst of connects cannot overshoot.
3. Past the cap, requests wait in a bounded FIFO (``max_waiters``, ``wait_timeout``);
   a released connection is handed straight to the oldest waiter.  A full queue or a
   wait past its deadline is ``pool_exhausted`` (503) whose detail names the limit that
   was hit, counted by ``exhausted(label, reason)`` (a metric of its own).
4. An idle connection that becomes readable or closes is dropped (the protocol does it
   and calls ``forget``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

from fastgw.errors import GatewayError
from fastgw.upstream.client import T_IDLE, UpstreamProtocol
from fastgw.upstream.peer import Peer  # noqa: F401  (the pool's identity; re-exported)


class Pool:
    __slots__ = ("peer", "loop", "idle", "open", "waiters", "max_idle", "max_connections",
                 "max_waiters", "wait_timeout", "idle_timeout", "connect_timeout", "stats", "closed", "reused",
                 "tmin", "exhausted")

    def __init__(self, peer: Peer, loop, *, max_idle: int, max_connections: int, max_waiters: int,
                 wait_timeout: float, idle_timeout: float, connect_timeout: float, stats=None,
                 exhausted=None) -> None:
        self.peer = peer
        self.loop = loop
        self.idle: list[UpstreamProtocol] = []
        self.open: set[UpstreamProtocol] = set()
        self.waiters: deque = deque()
        self.max_idle = max_idle
        self.max_connections = max_connections
        self.max_waiters = max_waiters
        self.wait_timeout = wait_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.stats = stats  # callable(event: str) or None: "created", "closed" (rare events)
        self.closed = False
        self.reused = 0     # reuses not yet published (hot path: an int, not a call)
        self.tmin = idle_timeout  # shortest timeout set on its connections (App lowers it per route)
        self.exhausted = exhausted  # callable(label, reason) or None: a 503 from this pool

    # ------------------------------------------------------------------ acquire
    def acquire_idle(self) -> UpstreamProtocol | None:
        """An idle, usable connection (newest first), or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            t = conn.transport
            if conn.state == 0 and t is not None and not t.is_closing():  # idle, transport open
                self.reused += 1  # published to metrics on the worker tick
                return conn
        return None

    def acquire(self, callback) -> None:
        """Get a connection: ``callback(conn, None)`` or ``callback(None, GatewayError)``.

        Called synchronously when an idle connection exists; otherwise after a connect or
        a wait.  Returns a cancel handle (callable) or None.
        """
        conn = self.acquire_idle()
        if conn is not None:
            callback(conn, None)
            return None
        if len(self.open) < self.max_connections:
            return self._connect(callback)
        if len(self.waiters) >= self.max_waiters:
            callback(None, self._exhausted("queue_full", (
                f"connection pool to {self.peer.label} is full: all pool.max_connections "
                f"({self.max_connections}) connections are busy and pool.max_waiters ({self.max_waiters}) "
                f"requests are already waiting")))
            return None
        entry = [callback, None]
        entry[1] = self.loop.call_later(self.wait_timeout, self._wait_expired, entry)
        self.waiters.append(entry)
        return lambda: self._cancel_wait(entry)

    def connect_fresh(self, callback):
        """A new connection (a retry after a reused one failed), within the cap; past the
        cap the request waits like any other.  Returns a cancel handle or None."""
        if len(self.open) < self.max_connections:
            return self._connect(callback)
        return self.acquire(callback)

    def _wait_expired(self, entry) -> None:
        try:
            self.waiters.remove(entry)
        except ValueError:
            return
        entry[0](None, self._exhausted("wait_timeout", (
            f"no connection to {self.peer.label} became free within pool.wait_timeout ({self.wait_timeout:g}s); "
            f"all pool.max_connections ({self.max_connections}) connections are busy")))

    def _exhausted(self, reason: str, detail: str) -> GatewayError:
        if self.exhausted is not None:
            self.exhausted(self.peer.label, reason)
        return GatewayError("pool_exhausted", detail)

    def _cancel_wait(self, entry) -> None:
        try:
            self.waiters.remove(entry)
        except ValueError:
            return
        if entry[1] is not None:
            entry[1].cancel()

    def _connect(self, callback):
        conn = UpstreamProtocol(self, self.loop)
        self.open.add(conn)
        task = self.loop.create_task(self._do_connect(conn, callback))
        return task.cancel

    async def _do_connect(self, conn: UpstreamProtocol, callback) -> None:
        peer = self.peer
        try:
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: conn, peer.host, peer.port, ssl=peer.tls,
                        server_hostname=peer.server_name if peer.tls is not None else None),
                    self.connect_timeout)
            except asyncio.TimeoutError:
                raise GatewayError("upstream_connect_timeout", f"connect to {peer.label} timed out",
                                   retryable=True) from None
            except ConnectionRefusedError:
                raise GatewayError("upstream_refused", f"connection to {peer.label} refused",
                                   retryable=True) from None
            except ssl.SSLError as e:
                raise GatewayError("upstream_tls", f"TLS with {peer.label} failed: {e.reason or e}",
                                   retryable=True) from None
            except (OSError, socket.gaierror) as e:
                raise GatewayError("upstream_unreachable", f"cannot connect to {peer.label}: {e.strerror or e}",
                                   retryable=True) from None
        except GatewayError as err:
            self.open.discard(conn)
            callback(None, err)
            self._wake_waiter_for_slot()
            return
        except asyncio.CancelledError:
            self.open.discard(conn)
            if conn.transport is not None:
                conn.transport.abort()
            raise
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.stats is not None:
            self.stats("created")
        callback(conn, None)

    # ------------------------------------------------------------------ release
    def release(self, conn: UpstreamProtocol, reusable: bool) -> None:
        """The one way a connection leaves an exchange: parked (or handed to a waiter)
        when ``reusable``, else dropped (aborted if a response was in progress).
        ``pipeline.proxy.Proxy.upstream_done`` writes out the parking of the usual
        keep-alive exchange (no waiter, room in ``idle``): keep the two in step."""
        # (state 0 is IDLE: not closed meanwhile; a transport that is closing is caught
        # by acquire_idle, which checks it anyway)
        if not reusable or self.closed or conn.state != 0 or conn.transport is None:
            conn.drop()
            self._wake_waiter_for_slot()
            return
        # Parked: the exchange is forgotten and the idle timeout armed (written here, not
        # as a method of the connection: a Python call less per exchange; the rest of its
        # per-request state is at its start values, ``UpstreamProtocol._end``).  Reading
        # is resumed if a slow client had paused it, or the next response would never be read.
        if conn.read_paused:
            conn.pause_reading(False)
        conn.down = None
        conn.ctx = None
        conn.reused = True
        # one clock read for idle_since and the idle deadline; the two-store move when
        # the armed timer fires first (http.deadline)
        conn.idle_since = now = self.loop.time()
        dl = conn.dl
        at = now + self.idle_timeout
        if dl.timer is not None and dl.timer_at <= at:
            dl.at = at
            dl.kind = T_IDLE
        else:
            dl.set(T_IDLE, self.idle_timeout, now)
        if self.waiters:
            entry = self.waiters.popleft()
            if entry[1] is not None:
                entry[1].cancel()
            self.reused += 1
            entry[0](conn, None)
            return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        self.idle.append(conn)

    def _wake_waiter_for_slot(self) -> None:
        """A slot freed up (a connection closed): let the oldest waiter connect."""
        if self.waiters and len(self.open) < self.max_connections:
            entry = self.waiters.popleft()
            if entry[1] is not None:
                entry[1].cancel()
            self._connect(entry[0])

    def forget(self, conn: UpstreamProtocol) -> None:
        """The connection is closed: stop counting it (called by the protocol)."""
        if conn in self.open:
            self.open.discard(conn)
            if self.stats is not None:
                self.stats("closed")
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            if self.waiters:
                self.loop.call_soon(self._wake_waiter_for_slot)

    def take_reused(self) -> int:
        """Reuses since the last call (the worker tick publishes them as a metric)."""
        n, self.reused = self.reused, 0
        return n

    def close(self) -> None:
        """Retire the pool (config reload removed the peer): idle connections close now."""
        self.closed = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
