"""Revocation table: revoked token ids, sessions and users, plus refresh rotations (L2).

Who writes what: any process (workers: logout, refresh reuse, rotations; the control
process: the admin API and the Redis subscriber) inserts under the table's one lock (a
robust process-shared mutex, ``fastgw.shm.locks``: no syscall uncontended, a holder that
dies never blocks the others).  Readers on the request path never take the lock.

Entries.  Each slot holds one entry with its own expiry (wall-clock seconds):

=========  =======================  =================================================
kind       key                      meaning
=========  =======================  =================================================
``jti``    a token's ``jti``        that one token is revoked
``sid``    a session id             every token carrying ``sid`` is revoked
``sub``    a subject                tokens of ``sub`` issued before ``at`` are revoked
``rot``    a refresh token's jti    it was rotated at ``at`` (reuse detection, grace)
=========  =======================  =================================================

Rules it keeps:

1. A live entry is never evicted; an expired one is reclaimed by the next insert that
   probes past it.  Open addressing with linear probing from a CRC32 of (kind, key); an
   empty slot (kind 0) ends a probe.
2. Revocations are never dropped for rotations: rotations may hold at most
   ``(1 - reserved) * slots`` live entries (``rot_full`` when refused, the caller answers
   503); revocations may use every slot.
3. Every revocation (not a rotation) takes the next sequence number and is written to the
   log ring (``LOG`` slot indices) before the sequence cell is bumped, so a process can
   follow new revocations incrementally (``Mirror.sync``); one that fell more than
   ``LOG`` behind rescans the whole table.

Layout (little-endian) at ``offset``: 8 cells of 8 bytes (seq, live revocations, live
rotations, refused rotations, slots, rot cap, 2 spare), one lock (64 bytes), the log ring
(``LOG`` x 8 bytes), then ``slots`` x ``SLOT`` bytes: kind u8, key length u8, 6 pad,
expiry f64, at f64, created f64, 96 key bytes (a longer key is kept as a BLAKE2b digest).
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib

from fastgw.shm import locks

SLOT = 128
KEY_MAX = SLOT - 32
LOG = 8192
HEAD = 64
KINDS = {"jti": 1, "sid": 2, "sub": 3, "rot": 4}
NAMES = {v: k for k, v in KINDS.items()}
ROT = 4
_C_SEQ, _C_REV, _C_ROT, _C_REFUSED = 0, 1, 2, 3
_SLOT = struct.Struct("<BB6xddd")
_ENTRY = struct.Struct("<BB6xddd%ds" % KEY_MAX)


def size(slots: int) -> int:
    return HEAD + locks.SIZE + LOG * 8 + slots * SLOT


def norm_key(key: str) -> bytes:
    b = key.encode()
    if len(b) <= KEY_MAX:
        return b
    return b"#" + hashlib.blake2b(b, digest_size=40).hexdigest().encode()


class RotFull(Exception):
    """The rotations' share of the table is full: refuse the refresh (503)."""


class RevocationTable:
    """The shared table (see the module doc)."""

    __slots__ = ("mm", "q", "base", "slots", "locks", "h", "log_at", "slots_at", "rot_cap")

    def __init__(self, mm, q, offset: int, slots: int, lock_kind: int, fd: int = -1,
                 reserved: float = 0.5) -> None:
        self.mm = mm
        self.q = q
        self.base = offset // 8
        self.slots = slots
        self.locks = locks.stripe_locks(lock_kind, mm, fd, offset + HEAD, 1) if slots else None
        self.h = self.locks.handles[0] if slots else None
        self.log_at = offset + HEAD + locks.SIZE
        self.slots_at = self.log_at + LOG * 8
        self.rot_cap = int(slots * (1 - reserved))

    def init_locks(self) -> None:
        if self.locks is not None:
            self.locks.init()

    # -- reads without the lock (mirror, admin) -----------------------------------------
    @property
    def seq(self) -> int:
        return self.q[self.base + _C_SEQ]

    def counts(self) -> dict:
        q, b = self.q, self.base
        return {"revocations": q[b + _C_REV], "rotations": q[b + _C_ROT], "slots": self.slots,
                "rotation_cap": self.rot_cap, "rotations_refused": q[b + _C_REFUSED]}

    def entry(self, i: int):
        """(kind, key, expiry, at, created) of slot ``i``."""
        kind, n, exp, at, created, key = _ENTRY.unpack_from(self.mm, self.slots_at + i * SLOT)
        return kind, key[:n], exp, at, created

    def log_slot(self, s: int) -> int:
        return self.q[(self.log_at >> 3) + s % LOG]

    def scan(self):
        """Every revocation entry (kind, key, expiry, at, created): a full pass."""
        mm, at = self.mm, self.slots_at
        for i in range(self.slots):
            k = mm[at + i * SLOT]
            if k and k != ROT:
                yield self.entry(i)

    # -- writes under the lock -----------------------------------------------------------
    def _lock(self) -> None:
        rc = self.locks.lock(self.h)
        if rc:
            self.locks.repair(self.h, rc)

    def _find(self, kind: int, key: bytes, now: float):
        """(slot of the key or None, first reusable slot or None); caller holds the lock."""
        n = self.slots
        i = zlib.crc32(key, kind) % n
        free = None
        mm, at = self.mm, self.slots_at
        for _ in range(n):
            off = at + i * SLOT
            k, kl, exp, _a, _c = _SLOT.unpack_from(mm, off)
            if k == 0:
                return None, (free if free is not None else i)
            if k == kind and kl == len(key) and mm[off + 32: off + 32 + kl] == key:
                return i, free
            if exp <= now and free is None:
                free = i
            i += 1
            if i == n:
                i = 0
        return None, free

    def _write(self, i: int, kind: int, key: bytes, exp: float, at: float, now: float) -> None:
        q, b = self.q, self.base
        off = self.slots_at + i * SLOT
        old, _kl, old_exp, _a, _c = _SLOT.unpack_from(self.mm, off)
        if old and old_exp > now:           # a live entry is replaced only by its own key
            pass
        elif old:                            # reclaiming an expired entry: uncount it
            c = _C_ROT if old == ROT else _C_REV
            if q[b + c]:
                q[b + c] -= 1
            old = 0
        if not old:
            q[b + (_C_ROT if kind == ROT else _C_REV)] += 1
        _ENTRY.pack_into(self.mm, off, kind, len(key), exp, at, now, key)

    def revoke(self, kind: str, key: str, expiry: float, at: float = 0.0, now: float | None = None) -> bool:
        """Record a revocation; True if stored (False only when every slot is live)."""
        k = KINDS[kind]
        kb = norm_key(key)
        now = time.time() if now is None else now
        self._lock()
        try:
            i, free = self._find(k, kb, now)
            if i is not None:
                _k, _n, exp0, at0, _c = _SLOT.unpack_from(self.mm, self.slots_at + i * SLOT)
                expiry, at = max(expiry, exp0), max(at, at0)
            elif free is None:
                return False
            else:
                i = free
            self._write(i, k, kb, expiry, at, now)
            q, b = self.q, self.base
            s = q[b + _C_SEQ]
            q[(self.log_at >> 3) + s % LOG] = i
            q[b + _C_SEQ] = s + 1
            return True
        finally:
            self.locks.unlock(self.h)

    def rotate(self, jti: str, expiry: float, now: float) -> float | None:
        """Check-and-rotate a refresh token: None if it was not rotated before (it is now,
        at ``now``), else the time of its first rotation.  Raises ``RotFull``."""
        kb = norm_key(jti)
        self._lock()
        try:
            i, free = self._find(ROT, kb, now)
            if i is not None:
                return _SLOT.unpack_from(self.mm, self.slots_at + i * SLOT)[3]
            q, b = self.q, self.base
            if free is None or q[b + _C_ROT] >= self.rot_cap:
                q[b + _C_REFUSED] += 1
                raise RotFull()
            self._write(free, ROT, kb, expiry, now, now)
            return None
        finally:
            self.locks.unlock(self.h)


class Mirror:
    """One process's copy of the live revocations, followed through the log: what the
    request path reads (dict lookups, no lock, no syscall).  Values are floats only (no
    tuples), so the garbage collector has nothing to walk however many entries there are."""

    __slots__ = ("table", "q", "at", "seen", "jti", "sid", "sub", "sub_exp", "any")

    def __init__(self, table: RevocationTable) -> None:
        self.table = table
        self.q = table.q
        self.at = table.base + _C_SEQ     # the sequence cell, read once per request
        self.seen = 0
        self.jti: dict[bytes, float] = {}       # key -> expiry
        self.sid: dict[bytes, float] = {}
        self.sub: dict[bytes, float] = {}       # key -> "issued before" cut-off
        self.sub_exp: dict[bytes, float] = {}
        self.any = False

    def _add(self, kind, key, exp, at) -> None:
        if kind == 1:
            self.jti[key] = exp
        elif kind == 2:
            self.sid[key] = exp
        elif kind == 3:
            self.sub[key] = at
            self.sub_exp[key] = exp

    def sync(self) -> None:
        t = self.table
        seq = t.seq
        if seq - self.seen > LOG:
            self.jti, self.sid, self.sub, self.sub_exp = {}, {}, {}, {}
            for kind, key, exp, at, _c in t.scan():
                self._add(kind, key, exp, at)
        else:
            for s in range(self.seen, seq):
                kind, key, exp, at, _c = t.entry(t.log_slot(s))
                self._add(kind, key, exp, at)
        self.seen = seq
        self.any = bool(self.jti or self.sid or self.sub)

    def revoked(self, rev, now: float) -> bool:
        """True if the token with revocation keys ``rev`` = (jti, sid, sub, iat) is revoked."""
        if self.q[self.at] != self.seen:
            self.sync()
        if not self.any:
            return False
        jti, sid, sub, iat = rev
        if jti is not None:
            e = self.jti.get(jti)
            if e is not None and e > now:
                return True
        if sid is not None:
            e = self.sid.get(sid)
            if e is not None and e > now:
                return True
        if sub is not None:
            e = self.sub.get(sub)
            if e is not None and self.sub_exp[sub] > now and (iat is None or iat < e):
                return True
        return False


_MIRROR_KEY = "fastgw.revocation.mirror"


def mirror_for(deps) -> Mirror | None:
    """This process's mirror of the region's table (one per process, kept across
    reloads in ``deps.state``); None without a shared region or with an empty table."""
    shm = getattr(deps, "shm", None)
    table = getattr(shm, "revocation", None)
    if table is None or not table.slots:
        return None
    st = getattr(deps, "state", None)
    if st is None:
        return Mirror(table)
    m = st.get(_MIRROR_KEY)
    if m is None or m.table is not table:
        m = st[_MIRROR_KEY] = Mirror(table)
    return m
