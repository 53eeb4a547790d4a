"""Shared by the session tests: the gateway and service part of their configs (one
authenticated route in front of an echo upstream at ``{UP}``); each test file appends
its own ``auth:`` section, then ``monitoring(admin_token)``."""

API_ROUTE = """
gateway:
  host: "127.0.0.1"
  port: 0
  trusted_proxies: []
services:
  api:
    url: "http://{UP}"
    routes:
      - path: "/api/*"
        name: api
        methods: ["GET"]
        auth: true
"""


def monitoring(admin_token: str) -> str:
    """The session tests' monitoring section: the admin API behind ``admin_token``."""
    return """monitoring:
  metrics_port: 0
  admin:
    port: 0
    token: "%s"
  logging:
    level: warning
""" % admin_token
