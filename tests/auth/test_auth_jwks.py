"""JWKS against a real server on 127.0.0.1: first fetch and readiness, key rotation,
unknown-kid refetch (rate-limited, single flight), outage (last good keys), a slow server
(stalls nothing else), TLS verification, hostile responses, and the fetch helper."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from fastgw.auth import fetch
from fastgw.auth.jwks import JwksSource, SourcePool
from fastgw.config.auth import JwksSource as JwksConfig
from fastgw.middleware import auth as auth_mw
from fastgw.middleware.auth import JwksAuth, build

from tests.support.auth import (JwksServer, Route, bearer, claims, ctx, deps, jwk_of, mint, private_for,
                                root, rsa_key, www)
from tests.support.certs import make_tls
from tests.support.upstream import FakeUpstream

K1, K2, K3 = rsa_key(1), rsa_key(2), rsa_key(3)


def arun(coro, timeout: float = 30):
    async def main():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


def jwks_cfg(url: str, **kw) -> dict:
    src = {"url": url, "allow_http": True, "algorithms": ["RS256", "ES256"], "refresh_interval": "60s",
           "min_refetch_interval": "0s", "timeout": "2s"}
    src.update(kw)
    return {"jwks": [src]}


def make_mw(url: str, route=None, **kw):
    d, audit, m = deps(loop=asyncio.get_running_loop())
    mw = build(root(**jwks_cfg(url, **kw)), None, route or Route("api", auth=True), d)
    return mw, d, audit, m


def tok(key, kid, **kw) -> bytes:
    return mint("RS256", claims(**kw), key=key, headers={"kid": kid} if kid else None)


async def call(mw, token, method="GET"):
    c = ctx([(b"Host", b"gw")] + ([bearer(token)] if token is not None else []), method=method)
    return await mw.request_filter(c), c


async def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# -- first fetch, readiness -------------------------------------------------------------------
def test_first_fetch_readiness_and_verify():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, d, _, m = make_mw(srv.url)
        assert isinstance(mw, JwksAuth)
        assert mw.ready() is False and auth_mw.ready(d) is False
        await wait_for(mw.ready)
        assert auth_mw.ready(d) and auth_mw.ready()
        r, c = await call(mw, tok(K1, "k1"))
        assert r is None and c.user == "alice"
        assert m.get("fastgw_jwks_refresh_total", result="changed") == 1
        assert auth_mw.status(d)[0]["keys"] == 1
        mw.close()
        await srv.stop()
    arun(main())


def test_first_request_waits_for_the_initial_fetch():
    """A token arriving before the first fetch completes joins it (single flight)."""
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        srv.delay = 0.2
        mw, *_ = make_mw(srv.url)
        results = await asyncio.gather(*(call(mw, tok(K1, "k1")) for _ in range(10)))
        assert all(r is None for r, _ in results)
        assert len(srv.requests) == 1
        mw.close()
        await srv.stop()
    arun(main())


def test_not_ready_until_server_comes_up():
    async def main():
        srv = JwksServer([jwk_of(K1, "k1")])
        await srv.start()
        port = srv.port
        await srv.stop()                       # the IdP is down at boot
        mw, d, _, m = make_mw(srv.url)
        await wait_for(lambda: m.get("fastgw_jwks_refresh_total", result="error") >= 1)
        assert not mw.ready()
        r, _ = await call(mw, tok(K1, "k1"))   # no keys at all: refused, not crashed
        assert r.status == 401
        srv.port = port
        await srv.start()                      # back: the backoff retry picks it up (1 s, 2 s)
        await wait_for(mw.ready, timeout=8)
        assert (await call(mw, tok(K1, "k1")))[0] is None
        mw.close()
        await srv.stop()
    arun(main())


# -- rotation ---------------------------------------------------------------------------------
def test_rotation_new_kid_refetched_old_key_dropped_from_cache():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, d, audit, m = make_mw(srv.url, min_refetch_interval="0.2s", refresh_interval="60s")
        await wait_for(mw.ready)
        old = tok(K1, "k1")
        assert (await call(mw, old))[0] is None
        assert (await call(mw, old))[0] is None
        assert m.get("fastgw_jwt_cache_total", result="hit") == 1
        srv.keys = [jwk_of(K2, "k2")]          # the IdP rotates: k1 gone, k2 in
        await asyncio.sleep(0.25)              # past the refetch floor
        r, c = await call(mw, tok(K2, "k2", sub="bob"))
        assert r is None and c.user == "bob"   # unknown kid -> refetch -> accepted
        assert len(srv.requests) == 2
        assert m.get("fastgw_jwks_refresh_total", result="changed") == 2
        r, _ = await call(mw, old)             # was cached; the key change cleared the cache
        assert r.status == 401 and b"unknown" in www(r)
        mw.close()
        await srv.stop()
    arun(main())


def test_background_refresh_picks_up_rotation():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, d, _, m = make_mw(srv.url, refresh_interval="0.3s", min_refetch_interval="0.1s")
        await wait_for(mw.ready)
        srv.keys = [jwk_of(K1, "k1"), jwk_of(K3, "k3")]
        await wait_for(lambda: m.get("fastgw_jwks_refresh_total", result="changed") == 2)
        n = len(srv.requests)
        assert (await call(mw, tok(K3, "k3")))[0] is None
        assert len(srv.requests) == n          # known already: no fetch on the request path
        mw.close()
        await srv.stop()
    arun(main())


def test_unknown_kid_refetch_is_rate_limited():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, *_ = make_mw(srv.url, min_refetch_interval="30s", refresh_interval="60s")
        await wait_for(mw.ready)
        for i in range(20):
            r, _ = await call(mw, tok(K1, f"attacker-{i}"))
            assert r.status == 401
        assert len(srv.requests) == 1          # only the boot fetch
        mw.close()
        await srv.stop()
    arun(main())


def test_unknown_kid_refetch_single_flight():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, *_ = make_mw(srv.url, min_refetch_interval="0s")
        await wait_for(mw.ready)
        srv.delay = 0.2
        srv.keys = [jwk_of(K1, "k1"), jwk_of(K2, "k2")]
        results = await asyncio.gather(*(call(mw, tok(K2, "k2")) for _ in range(25)))
        assert all(r is None for r, _ in results)
        assert len(srv.requests) == 2
        mw.close()
        await srv.stop()
    arun(main())


# -- outage and slowness --------------------------------------------------------------------------
def test_outage_keeps_last_good_keys():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, d, _, m = make_mw(srv.url, refresh_interval="0.2s", min_refetch_interval="0.1s")
        await wait_for(mw.ready)
        port = srv.port
        await srv.stop()
        await wait_for(lambda: m.get("fastgw_jwks_refresh_total", result="error") >= 1)
        assert mw.ready()                      # last good keys still serve
        assert (await call(mw, tok(K1, "k1", sub="carol")))[0] is None
        # error statuses and garbage also keep the keys
        srv.port = port
        await srv.start()
        for status, body in ((500, None), (200, b"<html>"), (200, b'{"keys": 5}'),
                             (200, json.dumps({"keys": [jwk_of(private_for("ES384"), "e")]}).encode())):
            srv.status, srv.body = status, body
            before = m.get("fastgw_jwks_refresh_total", result="error")
            await wait_for(lambda b=before: m.get("fastgw_jwks_refresh_total", result="error") > b)
            assert (await call(mw, tok(K1, "k1", sub=f"u{status}{len(body or b'')}")))[0] is None
        srv.status, srv.body = 200, None
        await wait_for(lambda: mw.verifier.ring.sources[0].failures == 0)
        mw.close()
        await srv.stop()
    arun(main())


@pytest.mark.timing
def test_slow_jwks_server_stalls_no_other_request():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, d, _, m = make_mw(srv.url, timeout="0.5s", min_refetch_interval="0s")
        await wait_for(mw.ready)
        srv.delay = 5.0                        # from now on the IdP takes 5 s
        t0 = time.monotonic()
        slow = asyncio.ensure_future(call(mw, tok(K2, "k2")))  # unknown kid: waits for the fetch
        await asyncio.sleep(0.05)
        for i in range(50):                    # known kid: never waits
            t1 = time.monotonic()
            r, _ = await call(mw, tok(K1, "k1", sub=f"user{i}"))
            assert r is None and time.monotonic() - t1 < 0.2
        r, _ = await slow
        assert r.status == 401                 # bounded by the fetch timeout
        assert 0.4 < time.monotonic() - t0 < 2.0
        assert m.get("fastgw_jwks_refresh_total", result="error") == 1
        mw.close()
        await srv.stop()
    arun(main())


def test_slow_but_within_timeout_is_waited_for():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, *_ = make_mw(srv.url, timeout="3s")
        await wait_for(mw.ready)
        srv.delay = 0.3
        srv.keys = [jwk_of(K2, "k2")]
        assert (await call(mw, tok(K2, "k2")))[0] is None
        mw.close()
        await srv.stop()
    arun(main())


def test_request_cancelled_while_waiting_does_not_cancel_the_fetch():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        mw, *_ = make_mw(srv.url)
        await wait_for(mw.ready)
        srv.delay = 0.3
        srv.keys = [jwk_of(K2, "k2")]
        t = asyncio.ensure_future(call(mw, tok(K2, "k2")))
        await asyncio.sleep(0.05)
        t.cancel()
        await wait_for(lambda: mw.verifier.ring.knows_kid("k2"))
        mw.close()
        await srv.stop()
    arun(main())


# -- TLS ----------------------------------------------------------------------------------------
def test_https_with_ca_file(tmp_path):
    async def main():
        sctx, ca = make_tls(tmp_path)
        srv = await JwksServer([jwk_of(K1, "k1")], ssl_ctx=sctx).start()
        assert srv.url.startswith("https://")
        mw, *_ = make_mw(srv.url, ca_file=ca, allow_http=False)
        await wait_for(mw.ready)
        assert (await call(mw, tok(K1, "k1")))[0] is None
        mw.close()
        # without the CA the certificate is not trusted: never ready
        mw, d, _, m = make_mw(srv.url, allow_http=False)
        await wait_for(lambda: m.get("fastgw_jwks_refresh_total", result="error") >= 1)
        assert not mw.ready()
        assert "CERTIFICATE_VERIFY_FAILED" in mw.verifier.ring.sources[0].last_error
        mw.close()
        await srv.stop()
    arun(main())


def test_https_under_uvloop(tmp_path):
    uvloop = pytest.importorskip("uvloop")

    async def main():
        sctx, ca = make_tls(tmp_path)
        srv = await JwksServer([jwk_of(K1, "k1")], ssl_ctx=sctx).start()
        srv.chunked = True
        r = await fetch.get(srv.url, timeout=2, max_size=1 << 16, ssl_ctx=fetch.tls_context(ca))
        assert r.status == 200 and json.loads(r.body)["keys"][0]["kid"] == "k1"
        await srv.stop()
    uvloop.run(main())


def test_http_refused_by_the_fetcher_unless_allowed():
    async def main():
        with pytest.raises(fetch.FetchError, match="not allowed"):
            await fetch.get("http://127.0.0.1:1/x", timeout=1, max_size=10)
        with pytest.raises(fetch.FetchError, match="not allowed"):
            await fetch.get("file:///etc/passwd", timeout=1, max_size=10, allow_http=True)
    arun(main())


# -- hostile or odd responses ----------------------------------------------------------------------
def test_body_size_limit_and_key_count_limit():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        srv.body = b'{"keys": [' + b" " * 5000 + b"]}"
        src = JwksSource(JwksConfig(url=srv.url, allow_http=True, max_size=1024))
        assert not await src.refresh() and "exceeds" in src.last_error
        srv.chunked = True
        assert not await src.refresh() and "exceeds" in src.last_error
        srv.body, srv.chunked = None, False
        srv.keys = [jwk_of(K1, f"k{i}") for i in range(5)]
        src = JwksSource(JwksConfig(url=srv.url, allow_http=True, max_keys=4))
        assert not await src.refresh() and "max_keys" in src.last_error
        await srv.stop()
    arun(main())


def test_unusable_keys_are_skipped():
    async def main():
        priv_jwk = jwk_of(K2, "priv")
        from jwt.algorithms import RSAAlgorithm
        priv_jwk = RSAAlgorithm.to_jwk(K2, as_dict=True) | {"kid": "priv"}
        keys = [jwk_of(K1, "enc", use="enc"), jwk_of(K1, "noverify", key_ops=["encrypt"]),
                priv_jwk, {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
                jwk_of(K1, "wrongalg", alg="RS512"), jwk_of(rsa_key(0, 1024), "weak"),
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}, "not a dict",
                jwk_of(K1, "good", alg="RS256"), jwk_of(private_for("ES256"), "ec")]
        srv = await JwksServer(keys).start()
        src = JwksSource(JwksConfig(url=srv.url, allow_http=True, algorithms=["RS256", "ES256"]))
        assert await src.refresh()
        assert sorted(k.kid for k in src.index.keys) == ["ec", "good"]
        await srv.stop()
    arun(main())


def test_cache_control_and_etag():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        srv.headers = {"Cache-Control": "public, max-age=120"}
        srv.etag = '"v1"'
        m_calls = []

        class M:
            def inc(self, name, labels, value=1):
                m_calls.append((name, dict(labels).get("result")))
        src = JwksSource(JwksConfig(url=srv.url, allow_http=True, refresh_interval=600,
                                    min_refetch_interval=30), metrics=M())
        assert await src.refresh() and src.lifetime == 120
        srv.headers = {"Cache-Control": "max-age=1"}
        assert await src.refresh() and src.lifetime == 30        # clamped to the floor
        assert srv.requests[-1]["headers"]["if-none-match"] == '"v1"'
        assert m_calls[-1] == ("fastgw_jwks_refresh_total", "not_modified")
        srv.headers = {}
        assert await src.refresh() and src.lifetime == 600
        await srv.stop()
    arun(main())


def test_token_jku_is_never_fetched():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        evil = await JwksServer([jwk_of(K3, "k1")]).start()
        mw, *_ = make_mw(srv.url)
        await wait_for(mw.ready)
        t = mint("RS256", claims(roles=["admin"]), key=K3,
                 headers={"kid": "evil", "jku": evil.url, "x5u": evil.url})
        r, _ = await call(mw, t)
        assert r.status == 401 and evil.requests == []
        mw.close()
        await srv.stop()
        await evil.stop()
    arun(main())


# -- lifecycle ---------------------------------------------------------------------------------
def test_reload_shares_the_source_and_close_stops_it():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        d, _, _ = deps(loop=asyncio.get_running_loop())
        cfg = jwks_cfg(srv.url)
        a = build(root(**cfg), None, Route("a", auth=True), d)
        await wait_for(a.ready)
        b = build(root(**cfg), None, Route("a", auth=True), d)     # a reload with the same JWKS
        sa, sb = a.verifier.ring.sources[0], b.verifier.ring.sources[0]
        assert sa is sb and sb.ready and sb.refs == 2
        assert a.verifier.cache is not b.verifier.cache
        a.close()
        assert sb.refs == 1 and sb._task is not None
        assert (await call(b, tok(K1, "k1")))[0] is None
        b.close()
        assert sb._task is None and auth_mw.status(d) == []
        assert len(srv.requests) == 1
        await srv.stop()
    arun(main())


def test_unused_jwks_is_not_fetched():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        d, _, _ = deps(loop=asyncio.get_running_loop())
        mw = build(root(**jwks_cfg(srv.url)), None, Route("open"), d)
        await asyncio.sleep(0.1)
        assert srv.requests == [] and auth_mw.ready(d)
        assert mw.request_filter(ctx([(b"X-User-Id", b"x")])) is None
        await srv.stop()
    arun(main())


def test_mixed_static_and_jwks_keys():
    async def main():
        srv = await JwksServer([jwk_of(K1, "k1")]).start()
        d, _, _ = deps(loop=asyncio.get_running_loop())
        cfg = jwks_cfg(srv.url)
        cfg["jwt_secret"] = "s" * 32
        mw = build(root(**cfg), None, Route("a", auth=True), d)
        await wait_for(mw.ready)
        assert (await call(mw, tok(K1, "k1")))[0] is None
        assert (await call(mw, mint("HS256", claims(), key="s" * 32)))[0] is None
        mw.close()
        await srv.stop()
    arun(main())


# -- the fetch helper alone ----------------------------------------------------------------------
def raw_server(answer: bytes, delay: float = 0.0) -> tuple[FakeUpstream, str]:
    """The shared fake upstream answering ``answer`` (after ``delay`` s) to any request,
    then closing; started, with its URL."""
    def handle(req, conn) -> bool:
        if not (delay and conn.stopping.wait(delay)):
            conn.send(answer)
        return False
    s = FakeUpstream(handler=handle, read_body=False).__enter__()
    return s, f"http://{s.addr}/"


@pytest.mark.parametrize("answer, err", [
    (b"garbage\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 40000 + b"\r\n\r\n", "head too large"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "exceeds"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "IncompleteRead"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer-encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ValueError"),
    (b"HTTP/1.1 200 OK\r\n" + b"\r\n" + b"x" * 5000, "exceeds"),
])
def test_fetch_rejects(answer, err):
    async def main():
        s, url = raw_server(answer)
        with pytest.raises(fetch.FetchError, match=err):
            await fetch.get(url, timeout=2, max_size=4096, allow_http=True)
        s.stop()
    arun(main())


@pytest.mark.timing
def test_fetch_timeout_and_refused():
    async def main():
        s, url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=3)
        t0 = time.monotonic()
        with pytest.raises(fetch.FetchError, match="timed out"):
            await fetch.get(url, timeout=0.2, max_size=10, allow_http=True)
        assert time.monotonic() - t0 < 1
        s.stop()
        with pytest.raises(fetch.FetchError, match="ConnectionRefused|OSError"):
            await fetch.get(url, timeout=1, max_size=10, allow_http=True)
    arun(main())


def test_fetch_read_to_close_and_chunked():
    async def main():
        s, url = raw_server(b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}")
        r = await fetch.get(url, timeout=2, max_size=100, allow_http=True)
        assert r.status == 200 and r.body == b'{"a":1}'
        s.stop()
        s, url = raw_server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")
        r = await fetch.get(url, timeout=2, max_size=100, allow_http=True)
        assert r.body == b"abcde"
        s.stop()
    arun(main())


def test_source_pool_refcounts():
    pool = SourcePool()
    cfg = JwksConfig(url="https://idp.example/jwks")
    a = pool.acquire(cfg)
    b = pool.acquire(JwksConfig(url="https://idp.example/jwks"))
    assert a is b and a.refs == 2
    pool.release(a)
    pool.release(b)
    assert pool.sources() == []


def test_kid_required_when_the_set_has_several_keys():
    """OIDC Core §10.1: a multi-key set needs a kid; a kid-less token is not tried on each key."""
    async def main():
        srv = await JwksServer([jwk_of(K1), jwk_of(K2, "k2")]).start()
        mw, *_ = make_mw(srv.url)
        await wait_for(mw.ready)
        r, _ = await call(mw, tok(K1, None))
        assert r.status == 401 and b"unknown" in www(r)
        assert (await call(mw, tok(K1, "anything")))[0] is None   # the kid-less JWK matches any kid
        srv.keys = [jwk_of(K1)]                                   # a one-key set: no kid needed
        await mw.verifier.ring.sources[0].refresh()
        assert (await call(mw, tok(K1, None, sub="z")))[0] is None
        mw.close()
        await srv.stop()
    arun(main())
