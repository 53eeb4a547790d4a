"""What a client is told about its limits (L4 helper): 429 replies and rate-limit fields.

Fields (draft-ietf-httpapi-ratelimit-headers, Structured Field lists):

- ``RateLimit-Policy: "<name>";q=<burst>;w=<window>``: one item per limit that applied;
  a GCRA limit is a quota of ``burst`` requests restored over ``w = ceil(burst / rate)``
  seconds (the time an empty bucket takes to fill).  Constant per set of limits, so the
  value is built once per config (``LimitSet.policy``).
- ``RateLimit: "<name>";r=<remaining>;t=<seconds>``: per limit, the requests still allowed
  now and the whole seconds (rounded up) until its bucket is full again.
- ``Retry-After`` (429 only): whole seconds, at least 1, until the request would pass.
- legacy (``headers.legacy``): ``X-RateLimit-Limit`` (burst), ``X-RateLimit-Remaining``,
  ``X-RateLimit-Reset`` (delta seconds, as ``t``; not an epoch), for the *binding* limit:
  on a 429 the refusing limit with the longest wait, else the one with the fewest left.

Limit names are config names (``v.name`` characters plus ``:``), so they never need
escaping inside an sf-string.

The 429 body is problem+json of type ``quota-exceeded`` (the IANA problem-type registry
entry defined by the same draft) with its ``violated-policies`` extension member.
"""

from __future__ import annotations

from math import ceil

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"

H_POLICY = b"ratelimit-policy"
H_RATELIMIT = b"ratelimit"
H_RETRY_AFTER = b"retry-after"
H_LIMIT = b"x-ratelimit-limit"
H_REMAINING = b"x-ratelimit-remaining"
H_RESET = b"x-ratelimit-reset"


def window(rate: float, burst: int) -> int:
    """Whole seconds for an empty bucket to fill (at least 1)."""
    return max(1, ceil(burst / rate - 1e-9))


def policy_item(name: str, rate: float, burst: int) -> bytes:
    return b'"%s";q=%d;w=%d' % (name.encode(), burst, window(rate, burst))


def whole_seconds(s: float) -> int:
    """Seconds rounded up (a reset 0.2 s away is 1; exactly now is 0)."""
    n = int(s)
    return n + 1 if s > n else n


def binding(ds) -> int:
    """Index of the decision the legacy fields report."""
    best, key = 0, None
    for i, d in enumerate(ds):
        k = (0, -d[3]) if not d[0] else (1, d[1])
        if key is None or k < key:
            best, key = i, k
    return best


class Fields:
    """The header switches of one config, and the field builders."""

    __slots__ = ("ietf", "legacy", "on_allowed")

    def __init__(self, ietf: bool, legacy: bool, on_allowed: bool) -> None:
        self.ietf = ietf
        self.legacy = legacy
        self.on_allowed = on_allowed and (ietf or legacy)

    def build(self, ls, ds) -> list[tuple[bytes, bytes]]:
        """The fields for limit set ``ls`` and its decisions ``ds`` (same order)."""
        out = []
        if self.ietf:
            limits = ls.limits
            if len(ds) == 1:
                d = ds[0]
                rl = limits[0].rl_head + b"%d;t=%d" % (d[1], whole_seconds(d[2]))
            else:
                rl = b", ".join([lim.rl_head + b"%d;t=%d" % (d[1], whole_seconds(d[2]))
                                 for lim, d in zip(limits, ds)])
            out.append((H_POLICY, ls.policy))
            out.append((H_RATELIMIT, rl))
        if self.legacy:
            i = binding(ds) if len(ds) > 1 else 0
            d = ds[i]
            out.append((H_LIMIT, ls.limits[i].burst_b))
            out.append((H_REMAINING, b"%d" % d[1]))
            out.append((H_RESET, b"%d" % whole_seconds(d[2])))
        return out


def retry_after(ds) -> int:
    """Whole seconds (at least 1) until every refusing limit would pass."""
    wait = max(d[3] for d in ds if not d[0])
    return max(1, whole_seconds(wait))


def too_many(ctx, ls, ds, fields: Fields):
    """The 429 reply for a request refused by limit set ``ls``."""
    violated = [lim.name for lim, d in zip(ls.limits, ds) if not d[0]]
    wait = retry_after(ds)
    hs = [(H_RETRY_AFTER, b"%d" % wait)]
    hs.extend(fields.build(ls, ds))
    return ctx.problem(429, f"rate limit exceeded ({', '.join(violated)}): retry in {wait} s",
                       title=PROBLEM_TITLE, type=PROBLEM_TYPE, kind="rate_limited", headers=hs,
                       extra={"violated-policies": violated})


def backend_down(ctx, names: list[str]):
    """The 503 reply when a Redis-backed limit cannot be checked and fails closed."""
    return ctx.problem(503, "the rate-limit backend is unavailable; try again shortly",
                       kind="ratelimit_backend", headers=[(H_RETRY_AFTER, b"1")],
                       extra={"policies": names})
