"""The cheaper shapes of the hot path (issues 14 and 23) keep their behaviour: the
verified-token cache is bounded and evicts the oldest token, a cached identity carries
its header lines serialised once, the request id's line goes upstream and to the
client in one Ctx operation."""

from __future__ import annotations

from types import SimpleNamespace

from fastgw.auth.token import Identity, TokenCache
from fastgw.http.request import Request
from fastgw.middleware.request_id import RequestId
from fastgw.pipeline.ctx import Ctx


def test_token_cache_is_bounded_and_evicts_the_oldest_token() -> None:
    c = TokenCache(3)
    for k in "abc":
        c[k] = k.upper()
    assert c["a"] == "A"            # a hit is a plain lookup: it changes no order
    c["b"] = "B2"                   # replacing a stored token evicts nothing
    assert list(c) == ["a", "b", "c"] and c["b"] == "B2"
    c["d"] = "D"                    # a new token past maxsize: the oldest goes
    assert list(c) == ["b", "c", "d"] and len(c) == 3
    try:
        c["a"]
    except KeyError:
        pass
    else:
        raise AssertionError("evicted token still cached")


def test_identity_lines_are_its_headers_serialised() -> None:
    hs = ((b"X-User-Id", b"alice"), (b"X-User-Roles", b"admin,ops"))
    ident = Identity("alice", frozenset({"admin", "ops"}), {}, hs, 1e12, -1e12, None, "HS256")
    assert ident.lines == b"X-User-Id: alice\r\nX-User-Roles: admin,ops\r\n"
    assert Identity(None, frozenset(), {}, (), 1e12, -1e12, None, "HS256").lines == b""


def test_generated_request_id_goes_both_ways_in_one_line() -> None:
    cfg = SimpleNamespace(gateway=SimpleNamespace(request_id_header=None))
    mw = RequestId(cfg, None)
    ids = []
    for _ in range(2):
        ctx = Ctx(Request.build("GET", b"/x", [(b"Host", b"h")]))
        ctx.up_lines = b"a: 1\r\n"            # what an earlier middleware added stays
        assert mw.request_filter(ctx) is None
        rid = ctx.request_id
        assert rid.startswith(mw.prefix.decode()) and len(rid) > len(mw.prefix)
        assert ctx.up_lines == b"a: 1\r\nx-request-id: " + rid.encode() + b"\r\n"
        assert ctx.resp_lines == b"x-request-id: " + rid.encode() + b"\r\n"
        ids.append(rid)
    assert ids[0] != ids[1] and int(ids[1].rpartition("-")[2], 16) == int(ids[0].rpartition("-")[2], 16) + 1


def test_generated_request_ids_are_made_by_blocks_and_stay_consecutive() -> None:
    """Ids come 256 at a time (one block of the counter): across block boundaries they
    are the counter in hex, one apart, each line carrying its own id; a renamed header
    is written lower-case."""
    cfg = SimpleNamespace(gateway=SimpleNamespace(request_id_header="X-Correlation-ID"))
    mw = RequestId(cfg, None)
    got = [mw.take() for _ in range(600)]
    nums = [int(rid.rpartition("-")[2], 16) for _line, rid in got]
    assert nums == list(range(nums[0], nums[0] + 600)) and nums[0] == 256
    assert all(line == b"x-correlation-id: " + rid.encode() + b"\r\n" for line, rid in got)
    assert all(rid.startswith(mw.prefix.decode()) for _line, rid in got)
    assert len({rid for _line, rid in got}) == 600
