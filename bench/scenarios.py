"""The scenarios: what each one sends, how hard, and to which configurations.

Rules:
  1. A scenario is data (this table), never code: the runner reads its fields.
  2. Every scenario runs the same workload against each configuration it lists; the
     configurations are interleaved round by round (session.py).
  3. ``fastgw_config`` names the fastgw config the scenario needs ('bare', 'policy', ...);
     when ``python -m fastgw --check`` refuses that config, the feature is not built
     yet and the scenario's fastgw runs are skipped with the checker's message.
  4. ``workers`` is 1, or 0 meaning "the --workers N of this run" (the N-worker
     scenario, reported but never enforced).
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_BODY = b"fastgw bench: a small fixed response body of exactly one hundred bytes, to measure per-request cost\n"
assert len(SMALL_BODY) == 100
SIZE_16K = 16 * 1024
SIZE_1M = 1024 * 1024
POST_SIZE = 64 * 1024
SLOW_DELAY_S = 0.020
# gzip-json: the level both proxies compress at (nginx gzip_comp_level, fastgw
# compression.levels.gzip; fastgw's default, a common production nginx setting)
GZIP_LEVEL = 5


def json_16k() -> bytes:
    """16 KiB of API-like JSON (an array of records, values from a fixed LCG so every run
    serves the same bytes and the text compresses like real data, ~5x, not like one
    repeated byte); padded to the exact size with spaces before the closing bracket."""
    out, size, x, i = [], 1, 12345, 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31
        rec = (b'{"id":%d,"sku":"SKU-%06d","name":"item %d","price":%d.%02d,"stock":%d,"active":%s}'
               % (i, x % 999_983, x % 7919, x % 500, x % 100, x % 97, b"true" if x & 1 else b"false"))
        if size + len(rec) + 2 > SIZE_16K:
            break
        out.append(rec)
        size += len(rec) + 1
        i += 1
    body = b"[" + b",".join(out)
    return body + b" " * (SIZE_16K - 1 - len(body)) + b"]"


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    path: str  # upstream path, same through every proxy
    connections: int
    method: str = "GET"
    body_size: int = 0  # request body bytes (POST)
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # one new connection per request
    workers: int = 1  # 0: the run's --workers N (rule 4)
    fastgw_config: str = "bare"
    generator: str = "wrk"  # or 'openloop' (fixed offered rate)
    expect_bytes: int = 0  # response body size the preflight check expects (decoded)
    expect_encoding: str = ""  # the Content-Encoding the preflight check expects ("gzip")
    gzip_level: int = 0  # > 0: the proxies compress responses with gzip at this level
    configs: tuple[str, ...] = ("direct", "nginx", "fastgw")
    enforced: bool = True


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("small-50", "100 B responses, keep-alive, 50 connections", "/small", 50, expect_bytes=100,
             configs=("direct", "nginx", "pyfloor", "fastgw")),
    Scenario("small-256", "100 B responses, keep-alive, 256 connections", "/small", 256, expect_bytes=100),
    Scenario("16k", "16 KiB responses, keep-alive, 50 connections", "/16k", 50, expect_bytes=SIZE_16K),
    Scenario("1m", "1 MiB streaming downloads, keep-alive, 16 connections", "/1m", 16, expect_bytes=SIZE_1M),
    Scenario(
        "post-64k", "64 KiB POST uploads, keep-alive, 50 connections", "/upload", 50,
        method="POST", body_size=POST_SIZE, expect_bytes=100,
    ),
    Scenario(
        "newconn", "one new client connection per request (Connection: close), 50 clients", "/small", 50,
        close=True, expect_bytes=100,
    ),
    Scenario(
        "slow-1000", "upstream answers in 20 ms, 1,000 keep-alive connections", "/slow", 1000,
        expect_bytes=100,
    ),
    Scenario(
        "policy", "policy chain: cached JWT + RBAC + rate limit + CORS + security headers, 50 connections",
        "/small", 50, fastgw_config="policy", expect_bytes=100,
        headers=(("Authorization", "Bearer {token}"), ("Origin", "https://app.example.com")),
    ),
    Scenario(
        "fixed-rate", "100 B responses at a fixed offered rate (open loop), latency from the intended send time",
        "/small", 64, generator="openloop", expect_bytes=100,
    ),
    Scenario(
        "gzip-json", "16 KiB JSON responses gzipped by the proxy (Accept-Encoding: gzip), 50 connections",
        "/json16k", 50, fastgw_config="gzip", headers=(("Accept-Encoding", "gzip"),), expect_bytes=SIZE_16K,
        expect_encoding="gzip", gzip_level=GZIP_LEVEL, configs=("nginx", "fastgw"),
    ),
    Scenario(
        "cache-hit", "100 B responses served from the proxy's response cache (nginx proxy_cache on tmpfs), "
        "50 connections", "/cached", 50, fastgw_config="cache", expect_bytes=100, configs=("nginx", "fastgw"),
    ),
    Scenario(
        "lb4-50", "100 B responses, keep-alive, 50 connections, over 4 instances with least_request "
        "(beside small-50: the cost of balancing; reported, not enforced)", "/small", 50,
        fastgw_config="lb4", expect_bytes=100, configs=("fastgw",), enforced=False,
    ),
    Scenario(
        "small-50-nw", "100 B responses, 50 connections, proxies with N workers (reported, not enforced)",
        "/small", 50, workers=0, expect_bytes=100, enforced=False,
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
QUICK = ("small-50",)


def select(names: str | None, quick: bool) -> list[Scenario]:
    """Scenarios named in ``--scenarios a,b`` (in the table's order), or the default set."""
    if not names:
        return [BY_NAME[n] for n in QUICK] if quick else list(SCENARIOS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [s for s in SCENARIOS if s.name in wanted]
