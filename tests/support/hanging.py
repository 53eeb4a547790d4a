"""A small upstream for the failover deadline and budget tests: a threaded raw-socket
HTTP/1.1 server that counts the requests it received and answers by a keyword anywhere in
the path (so routes with prefixes reach it):

- ``/hang``: reads the request and never answers (until the gateway closes the connection);
- ``/slow503/MS``: waits MS milliseconds, then answers 503;
- ``/503``: answers 503 at once;
- anything else: 200 with the server's name as the body.

``HangingUpstream(name, mode="503")`` answers 503 to every request, whatever its path.

Every socket has a timeout, every thread is a daemon; ``stop()`` closes the listener and
every connection still open (so a hanging request ends with the test).
"""

from __future__ import annotations

import socket
import threading
import time


class HangingUpstream:
    def __init__(self, name: str = "up", mode: str = "") -> None:
        self.name = name
        self.mode = mode
        self.lock = threading.Lock()
        self.requests = 0
        self.conns: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HangingUpstream":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.settimeout(10.0)
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")   # (the tests send no bodies)
                path = head.split(b" ", 2)[1].decode()
                with self.lock:
                    self.requests += 1
                if "/hang" in path:
                    while c.recv(65536):
                        pass
                    return
                if "/slow503/" in path:
                    time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
                    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                elif "/503" in path or self.mode == "503":
                    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                else:
                    body = self.name.encode()
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return
        finally:
            try:
                c.close()
            except OSError:
                pass
