"""Rate limiting: the logic behind the ``ratelimit_ip`` and ``ratelimit`` middlewares.

One concept per module:

- ``keys``           the bytes that name a budget (client IP, user, header; fallbacks)
- ``headers``        RateLimit-Policy / RateLimit / legacy fields, the 429 and 503 replies
- ``redis_backend``  GCRA in one Lua script for limits shared between gateway hosts
- ``limiter``        the per-worker table and clock, limits, limit sets, the decision
- ``plan``           which limits apply to which request, built from the config

Layer: L4 (with ``pipeline`` and ``obs``): imports config (L1), shm (L2), obs (L4) only;
the middlewares (L6) import it.  The shared-memory GCRA table itself is
``fastgw.shm.ratelimit``; the operator's page is docs/ratelimit.md.
"""
