"""A tiny authoritative DNS server on loopback for discovery tests (dnspython messages).

``DnsServer`` answers UDP queries on 127.0.0.1 (port 0 = any free port) from dicts the
test mutates while the gateway runs:

- ``a[name]``: a list of IPv4 addresses; ``aaaa[name]``: IPv6 ones;
- ``srv[name]``: a list of ``(priority, weight, port, target)``; the targets' A records
  go into the additional section when ``a`` has them;
- ``ttl``: the TTL of every answer (short, so the gateway asks again soon);
- ``mode``: ``"ok"``, ``"servfail"`` (every query gets SERVFAIL) or ``"drop"`` (no answer:
  the resolver times out).

Names are given without the trailing dot.  ``queries`` counts the questions asked.
Always used as a context manager (the thread stops and the socket closes).
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, ttl: int = 1) -> None:
        self.a: dict[str, list[str]] = {}
        self.aaaa: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.ttl = ttl
        self.mode = "ok"
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-dns")

    def __enter__(self) -> "DnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                reply = self.answer(dns.message.from_wire(data))
            except Exception:
                continue
            if reply is not None:
                self.sock.sendto(reply.to_wire(), peer)

    def answer(self, q: dns.message.Message):
        self.queries += 1
        if self.mode == "drop":
            return None
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        if self.mode == "servfail":
            r.set_rcode(dns.rcode.SERVFAIL)
            return r
        question = q.question[0]
        name = question.name.to_text().rstrip(".").lower()
        t = question.rdtype
        known = name in self.a or name in self.aaaa or name in self.srv
        if t == dns.rdatatype.A and self.a.get(name):
            r.answer.append(dns.rrset.from_text_list(question.name, self.ttl, "IN", "A", self.a[name]))
        elif t == dns.rdatatype.AAAA and self.aaaa.get(name):
            r.answer.append(dns.rrset.from_text_list(question.name, self.ttl, "IN", "AAAA", self.aaaa[name]))
        elif t == dns.rdatatype.SRV and self.srv.get(name):
            recs = self.srv[name]
            r.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, "IN", "SRV", [f"{p} {w} {port} {tgt}." for p, w, port, tgt in recs]))
            for tgt in sorted({tgt for *_x, tgt in recs}):
                if self.a.get(tgt):
                    r.additional.append(dns.rrset.from_text_list(tgt + ".", self.ttl, "IN", "A", self.a[tgt]))
        elif not known:
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r
