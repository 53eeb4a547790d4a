"""Mint a token the gateway accepts, for demos and manual tests (never used on a request).

    JWT_SECRET=... python -m fastgw.auth.mint --sub alice --roles admin,editor --ttl 1h

Signs with the HMAC shared secret (``auth.jwt_secret``) read from an environment variable
(``--secret-env``, default ``JWT_SECRET``), never from the command line, so it does not
land in shell history or ``ps``.  Sets ``iat``/``exp`` (so ``token_expiry`` applies) and,
when given, ``iss``/``aud``.  Prints the token alone on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jwt

from fastgw.config.base import parse_duration


def mint_token(secret: str, sub: str, roles: list[str], ttl: float = 3600.0, *, alg: str = "HS256",
               issuer: str | None = None, audience: str | None = None, kid: str | None = None,
               now: float | None = None) -> str:
    """An HMAC-signed access token for ``sub`` with ``roles``, valid for ``ttl`` seconds."""
    iat = int(time.time() if now is None else now)
    claims: dict = {"sub": sub, "roles": list(roles), "iat": iat, "exp": iat + int(ttl)}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=alg, headers={"kid": kid} if kid else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgw.auth.mint", description=__doc__.split("\n")[0])
    p.add_argument("--sub", default="demo-user")
    p.add_argument("--roles", default="viewer", help="comma-separated, e.g. admin,editor")
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 24h")
    p.add_argument("--alg", default="HS256", choices=["HS256", "HS384", "HS512"])
    p.add_argument("--issuer")
    p.add_argument("--audience")
    p.add_argument("--kid")
    p.add_argument("--secret-env", default="JWT_SECRET")
    a = p.parse_args(argv)
    secret = os.environ.get(a.secret_env)
    if not secret:
        print(f"error: set {a.secret_env} to the gateway's auth.jwt_secret", file=sys.stderr)
        return 2
    roles = [r for r in a.roles.split(",") if r]
    print(mint_token(secret, a.sub, roles, parse_duration(a.ttl), alg=a.alg, issuer=a.issuer,
                     audience=a.audience, kid=a.kid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
