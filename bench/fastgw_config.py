"""fastgw config rendering for the bench: the bare route and the policy chain.

Rules:
  1. The bare route ("bare"): one service, one ``/*`` route, request
     id, access log (to a file, so its cost is in the figures) and metrics on.  The
     upstream pool is sized for the concurrency, as nginx's ``keepalive`` is, and the
     client connection cap matches nginx's ``worker_connections`` (fastgw's default of
     1,000 per worker answers 503 at 1,000 clients while the warm-up's closed
     connections are still being reaped).
  2. The policy chain adds a valid JWT (HS256, minted here and reused, so the verified
     token cache is hit), RBAC, a rate limit far above the offered load (shared-memory
     backend), CORS and security headers.  Its key names follow the config issues
     (5, 6, 7); until those features exist ``fastgw --check`` refuses this file and the
     scenario skips with the checker's message.
  3. Configs are rendered with PyYAML from plain dicts, never by string pasting.
  4. The gzip config is the bare route with ``compression`` on at nginx's level
     (``scenarios.GZIP_LEVEL``); the client asks for gzip only, so gzip is chosen.
  5. The cache config is the bare route with the response cache on (``cache: true``);
     the upstream's ``/cached`` says ``max-age=3600``, so after the warm-up every
     request is a hit (nginx: ``proxy_cache`` on tmpfs).
  6. The lb4 config is the bare route over 4 instances with ``least_request``: the
     upstream nginx also listens on 127.0.0.2-4 (the same server), so each instance
     is its own peer with its own pool; the cost of balancing beside the bare route.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"
ORIGIN = "https://app.example.com"
NO_LIMIT = {"requests_per_second": 10_000_000, "burst": 10_000_000}


def _base(upstream_port: int, access_log: Path, connections: int) -> dict:
    return {
        # client connections capped like nginx's worker_connections in bench/nginx.py
        "gateway": {"host": "127.0.0.1", "port": 0, "max_connections": max(4096, connections * 3)},
        "services": {
            "bench": {
                "url": f"http://127.0.0.1:{upstream_port}",
                "pool": {"max_idle": max(1024, connections), "max_connections": max(1024, connections)},
                "routes": [{"path": "/*", "methods": ["GET", "HEAD", "POST"]}],
            }
        },
        "monitoring": {
            "metrics_port": 0,
            "logging": {"level": "warning", "access_log": {"enabled": True, "output": str(access_log)}},
        },
    }


def bare(upstream_port: int, access_log: Path, connections: int) -> dict:
    """Rule 1."""
    return _base(upstream_port, access_log, connections)


def policy(upstream_port: int, access_log: Path, connections: int) -> dict:
    """Rule 2."""
    cfg = _base(upstream_port, access_log, connections)
    route = cfg["services"]["bench"]["routes"][0]
    route.update({"auth": True, "roles": ["viewer", "admin"], "rate_limit": {**NO_LIMIT, "backend": "memory"}})
    cfg["auth"] = {"jwt_secret": JWT_SECRET, "roles": ["admin", "viewer"]}
    cfg["rate_limit"] = {"default": dict(NO_LIMIT), "authenticated": dict(NO_LIMIT)}
    cfg["cors"] = {"allow_origins": [ORIGIN]}
    cfg["security_headers"] = {"enabled": True}
    return cfg


def gzip(upstream_port: int, access_log: Path, connections: int) -> dict:
    """Rule 4."""
    from bench.scenarios import GZIP_LEVEL

    cfg = _base(upstream_port, access_log, connections)
    cfg["compression"] = {"min_size": "1k", "levels": {"gzip": GZIP_LEVEL}}
    return cfg


def cache(upstream_port: int, access_log: Path, connections: int) -> dict:
    """Rule 5."""
    cfg = _base(upstream_port, access_log, connections)
    cfg["cache"] = {"memory": "64m"}
    cfg["services"]["bench"]["routes"][0]["cache"] = True
    return cfg


def lb4(upstream_port: int, access_log: Path, connections: int) -> dict:
    """Rule 6."""
    cfg = _base(upstream_port, access_log, connections)
    svc = cfg["services"]["bench"]
    del svc["url"]
    svc["instances"] = [{"url": f"http://127.0.0.{k}:{upstream_port}"} for k in range(1, 5)]
    svc["load_balancing"] = "least_request"
    return cfg


RENDERERS = {"bare": bare, "policy": policy, "gzip": gzip, "cache": cache, "lb4": lb4}


def write(kind: str, path: Path, upstream_port: int, access_log: Path, connections: int) -> Path:
    path.write_text(yaml.safe_dump(RENDERERS[kind](upstream_port, access_log, connections), sort_keys=False))
    return path


def token() -> str:
    """A valid HS256 token with the viewer role, good for a day."""
    import jwt

    now = int(time.time())
    claims = {"sub": "bench-user", "roles": ["viewer"], "iat": now, "exp": now + 86400}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")
