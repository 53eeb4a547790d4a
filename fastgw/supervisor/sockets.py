"""Listening sockets the supervisor owns (L8): one SO_REUSEPORT socket per worker slot.

Why one socket per slot, bound before fork and kept by the supervisor: with
SO_REUSEPORT the kernel spreads new connections over the sockets of a port, each with its
own accept queue.  Closing one of them resets the connections waiting in its queue
(unless ``net.ipv4.tcp_migrate_req`` is 1), so a socket must live as long as its slot,
not as long as its worker: a replacement worker for slot i inherits socket i and
accepts what queued while the slot was empty.  A slot's sockets are closed only when the
slot itself goes away (TTOU, shutdown).

Port 0 is resolved once, by the first socket of each address; every later slot binds the
port the kernel chose, so all slots share one port.
"""

from __future__ import annotations

import socket

BACKLOG = 2048


class BindError(Exception):
    """A listening socket could not be created; the message names the address."""


def bind_listener(host: str, port: int, *, reuse_port: bool = True, backlog: int = BACKLOG) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return s


class Listeners:
    """The data listener's sockets, by worker slot, for every ``--bind`` address."""

    def __init__(self, binds: list[tuple[str, int]]) -> None:
        self.binds = list(binds)
        self.addresses: list[tuple[str, int]] = []     # (host, actual port), once resolved
        self.by_slot: dict[int, list[socket.socket]] = {}

    def open_slot(self, slot: int) -> list[socket.socket]:
        """Bind this slot's sockets (raises ``BindError``)."""
        socks: list[socket.socket] = []
        try:
            for i, (host, port) in enumerate(self.binds):
                if i < len(self.addresses):
                    port = self.addresses[i][1]
                s = bind_listener(host, port)
                if i >= len(self.addresses):
                    self.addresses.append((host, s.getsockname()[1]))
                socks.append(s)
        except BindError:
            for s in socks:
                s.close()
            raise
        self.by_slot[slot] = socks
        return socks

    def close_slot(self, slot: int) -> None:
        for s in self.by_slot.pop(slot, ()):
            s.close()

    def close_all(self) -> None:
        for slot in list(self.by_slot):
            self.close_slot(slot)

    def all_sockets(self) -> list[socket.socket]:
        return [s for socks in self.by_slot.values() for s in socks]
