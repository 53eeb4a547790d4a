"""JWT authentication logic (pure; used by ``fastgw.middleware.auth``).

Layer: like ``shm``/``cache`` (L2): imports only ``fastgw.errors``, ``fastgw.clock`` and
``fastgw.config`` besides pyjwt/cryptography, and never the pipeline, a
middleware, the engine or the runtime.  The only network code is ``fetch`` (a bounded,
non-blocking HTTP GET used for JWKS), driven by the running event loop.

Modules, one concept each:

- ``keys``    verification keys: PEM/secret/JWK loading, algorithm pinning, the key index
- ``token``   compact JWS parsing, signature check, claim rules, the verified ``Identity``
- ``rbac``    route role policies (any-of roles, or per-method roles)
- ``jwks``    a JWKS source: background refresh, rate-limited refetch, last good keys
- ``fetch``   a small async HTTP/1.1 GET over asyncio streams (TLS verified)
- ``mint``    mint a demo token from the config's shared secret (``python -m fastgw.auth.mint``)
"""
