"""The shared-memory revocation table (issue 27): expiry, reclaiming, the reserved share,
the log the mirrors follow, and check-and-rotate exactly once across processes."""

from __future__ import annotations

import os
import time

import pytest

from fastgw.auth.token import rev_key
from fastgw.shm import Region
from fastgw.shm.revocation import LOG, Mirror, RotFull, norm_key


@pytest.fixture
def region():
    r = Region.create(1, metrics_series=8, table_slots=64, health_slots=1, revocation_slots=256)
    yield r
    r.close()


def test_entries_expire_and_are_reclaimed_live_ones_never(region):
    t, now = region.revocation, time.time()
    for i in range(256):
        assert t.revoke("jti", f"j{i}", now + (1 if i % 2 else 1000), now=now)
    assert t.counts()["revocations"] == 256
    assert not t.revoke("jti", "one-more", now + 1000, now=now)      # every slot live: refused
    later = now + 2
    for i in range(128):             # the expired half is reclaimed, the live half stays
        assert t.revoke("sid", f"s{i}", later + 1000, now=later)
    m = Mirror(t)
    assert all(m.revoked((f"j{i}".encode(), None, None, None), later) for i in range(0, 256, 2))
    assert not t.revoke("sid", "full-again", later + 1000, now=later)


def test_rotations_use_only_their_share_revocations_all(region):
    t, now = region.revocation, time.time()
    t.rot_cap = 10
    for i in range(10):
        assert t.rotate(f"r{i}", now + 100, now) is None
    assert t.rotate("r3", now + 100, now + 1) == now          # already rotated: its time
    with pytest.raises(RotFull):
        t.rotate("r10", now + 100, now)
    for i in range(200):
        assert t.revoke("jti", f"j{i}", now + 100, now=now)
    assert t.counts()["rotations_refused"] == 1


def test_mirror_follows_the_log_and_rescans_after_overflow():
    r = Region.create(1, metrics_series=8, table_slots=64, health_slots=1, revocation_slots=4 * LOG)
    try:
        t, now = r.revocation, time.time()
        m = Mirror(t)
        assert not m.revoked((b"x", None, None, None), now)
        t.revoke("sub", "bob", now + 100, at=now)
        assert m.revoked((None, None, b"bob", now - 1), now) and not m.revoked((None, None, b"bob", now + 1), now)
        for i in range(LOG + 5):
            t.revoke("jti", f"j{i}", now + 100, now=now)
        assert m.revoked((b"j0", None, None, None), now) and m.revoked((f"j{LOG + 4}".encode(), None, None, None), now)
        long = "k" * 300
        t.revoke("sid", long, now + 100)
        assert norm_key(long) == rev_key(long) and m.revoked((None, rev_key(long), None, None), now)
    finally:
        r.close()


def test_rotate_is_exactly_once_across_processes(region):
    t, now = region.revocation, time.time()
    t.rot_cap = 200
    pids = []
    rfds = []
    for _ in range(3):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                won = sum(1 for i in range(60) if t.rotate(f"race{i}", now + 100, time.time()) is None)
                os.write(wfd, str(won).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        pids.append(pid)
        rfds.append(rfd)
    wins = 0
    for pid, rfd in zip(pids, rfds):
        os.waitpid(pid, 0)
        wins += int(os.read(rfd, 32) or b"0")
        os.close(rfd)
    assert wins == 60 and t.counts()["rotations"] == 60
