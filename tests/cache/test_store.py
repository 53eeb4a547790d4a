"""The per-worker store, its entries and the 304 rule as pure objects (no gateway): the
hit memo of an entry (``Entry.hot``: Age and Cache-Status made once per whole second),
recency (``Store.touch``: once per version of the store), the hit path's key memo
(``Store.memo``: emptied by every change) and ``rules.not_modified``."""

from __future__ import annotations

import pytest

from fastgw.cache.store import ENTRY_OVERHEAD, Entry, Store


def _entry(stored: float, age0: float, ttl: float, body: bytes = b"x") -> Entry:
    return Entry(200, [(b"Content-Type", b"text/plain")], body, stored, age0, ttl, 0.0, 0.0, False,
                 None, None, frozenset(), "h", "/p")


def _hit(e: Entry, now: float):
    """What the hit path of ``middleware.cache`` answers with at ``now`` (a ``Prebuilt``)."""
    return e.hot if now < e.hot_until else e.heat(now) if now < e.expires else None


def _hit_head(e: Entry, now: float) -> list | None:
    hot = _hit(e, now)
    return hot.headers if hot is not None else None


@pytest.mark.parametrize("age0,ttl", [(0.0, 10.0), (0.3, 7.25), (2.0, 3.0), (0.999, 1.5)])
def test_hot_head_always_says_the_current_age_and_ttl(age0, ttl):
    e = _entry(100.0, age0, ttl)
    now = 100.0
    while now < 100.0 + ttl + 1:
        head = _hit_head(e, now)
        age = e.age(now)
        left = ttl - age
        if left <= 0:
            assert head is None  # expired: the hit path leaves it to the full lookup
        else:
            assert head[:-2] == e.headers
            assert head[-2] == (b"Age", b"%d" % int(age))
            assert head[-1] == (b"Cache-Status", b"fastgw; hit; ttl=%d" % int(left))
        now += 0.0625  # (exact in binary: lands on whole seconds and on the boundaries)


def test_hot_head_is_made_once_per_second():
    e = _entry(10.0, 0.0, 60.0)
    first = _hit(e, 10.1)
    assert _hit(e, 10.9) is first                # same whole seconds: the same answer
    assert _hit(e, 11.2) is not first            # Age went from 0 to 1
    assert _hit_head(e, 11.2)[-2] == (b"Age", b"1")


def test_hot_answer_bytes_are_its_head_and_body_framed_for_each_connection_fate():
    e = _entry(10.0, 0.0, 60.0, body=b"hello")
    hot = _hit(e, 10.5)
    assert hot.line == b"HTTP/1.1 200 OK\r\n"
    assert hot.lines == b"Content-Type: text/plain\r\nAge: 0\r\nCache-Status: fastgw; hit; ttl=59\r\n"
    assert hot.body == b"hello"
    assert hot.keep == b"content-length: 5\r\n\r\n"
    assert hot.keep10 == b"connection: keep-alive\r\ncontent-length: 5\r\n\r\n"
    assert hot.close == b"content-length: 5\r\nconnection: close\r\n\r\n"
    e204 = Entry(204, [], b"", 10.0, 0.0, 60.0, 0.0, 0.0, False, None, None, frozenset(), "h", "/p")
    assert _hit(e204, 10.5).keep == b"\r\n"   # no Content-Length on a 204 (RFC 9110 8.6)


def test_touch_moves_an_entry_once_per_version_and_lru_evicts_the_oldest():
    size = _entry(0.0, 0.0, 60.0).size
    s = Store(3 * size)
    ka, kb, kc, kd = ((k, ()) for k in "abcd")
    for k in (ka, kb, kc):
        s.put(k, _entry(0.0, 0.0, 60.0))
    a = s.entries[ka]
    s.touch(ka, a)                   # a is now the most recent
    assert list(s.entries) == [kb, kc, ka]
    s.touch(kb, s.entries[kb])
    s.touch(ka, a)                   # moved once since the last change: stays behind b
    assert list(s.entries) == [kc, ka, kb]
    s.put(kd, _entry(0.0, 0.0, 60.0))  # a change: evicts the least recent (c)
    assert list(s.entries) == [ka, kb, kd] and s.evicted == 1
    s.touch(ka, a)                   # a new version: a moves again
    assert list(s.entries) == [kb, kd, ka]
    assert s.get(kb) is not None and list(s.entries) == [kd, ka, kb]
    assert s.bytes == 3 * size and size > ENTRY_OVERHEAD


def test_key_memo_is_emptied_by_every_change():
    s = Store(1 << 20)
    e = _entry(0.0, 0.0, 60.0)
    s.put(("p", ()), e)
    for change in (lambda: s.put(("q", ()), _entry(0.0, 0.0, 60.0)), lambda: s.remove(("q", ())),
                   lambda: s.purge_url(None, "/p"), s.clear):
        s.memo[b"/p"] = ("mw", "h", "http", e)
        change()
        assert s.memo == {}
    s.put(("p", ()), e)
    s.memo[b"/p"] = ("mw", "h", "http", None)
    s.remove(("absent", ()))          # nothing removed: nothing changed
    s.touch(("p", ()), e)             # a use is not a change
    assert s.get(("p", ())) is e and b"/p" in s.memo


@pytest.mark.parametrize("inm,ims,want", [
    (b'"a"', None, True), (b'W/"a"', None, True), (b'"b", W/"a"', None, True), (b"*", None, True),
    (b'"b"', None, False),
    (b'"b"', b"Wed, 02 Dec 2026 10:00:00 GMT", False),   # If-None-Match wins when both are sent
    (None, b"Wed, 02 Dec 2026 10:00:00 GMT", True), (None, b"Tue, 01 Dec 2026 10:00:00 GMT", True),
    (None, b"Mon, 30 Nov 2026 10:00:00 GMT", False), (None, b"not a date", False), (None, None, False),
])
def test_not_modified(inm, ims, want):
    from fastgw.cache.rules import not_modified
    assert not_modified(inm, ims, b'"a"', b"Tue, 01 Dec 2026 10:00:00 GMT") is want
    assert not_modified(inm, None, None, None) is False  # no validators stored: never
