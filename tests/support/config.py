"""Config builders: ``HEAD`` / ``ECHO_HEAD`` (the start of a real-process config), the
proxy-core config text over a RawUpstream, and BASE + ``edit`` +
``errors_of`` for the loader tests (a small valid config edited at one dotted path)."""

from __future__ import annotations

import copy

import pytest

from fastgw.config import ConfigError, load_config_data
from tests.support.wire import closed_port


# the head every real-process config starts with; ECHO_HEAD goes on with one service
# "echo" at {UP} and its routes list (a test appends its routes, 6-space indented)
HEAD = """
gateway:
  host: 127.0.0.1
  port: 0
  trusted_proxies: []
services:
"""
ECHO_HEAD = HEAD + """  echo:
    url: "http://{UP}"
    routes:
"""
# the services section of a one-route config: everything under /* (GET) to "echo" at {UP}
ECHO_GET_ALL = """services:
  echo:
    url: "http://{UP}"
    routes:
      - path: "/*"
        methods: ["GET"]
"""

ACCESS_LOG_BLOCK = """
monitoring:
  metrics_port: 0
  logging:
    level: warning
    access_log:
      enabled: true
      output: "{ACCESS_LOG}"
"""
ADMIN_ACCESS_LOG_BLOCK = ACCESS_LOG_BLOCK.replace("  metrics_port: 0\n", "  metrics_port: 0\n  admin: {port: 0}\n")

CORE_CONFIG = HEAD + """  main:
    url: "http://{UP}"
    routes:
      - path: "/api/*"
        name: api
        methods: ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
      - path: "/small/*"
        name: small
        methods: ["POST", "PUT"]
        max_body_size: 1024
      - path: "/enc/*"
        name: enc
        methods: ["GET"]
        allow_encoded_slash: true
      - path: "/only-get"
        name: only-get
        methods: ["GET"]
  slowsvc:
    url: "http://{UP}"
    timeout: 500ms
    routes:
      - path: "/slowsvc/*"
        methods: ["GET"]
  refused:
    url: "http://127.0.0.1:{CLOSED}"
    connect_timeout: 2s
    routes:
      - path: "/refused/*"
        methods: ["GET", "POST"]
""" + ACCESS_LOG_BLOCK


def core_config(up, **repl) -> str:
    text = CORE_CONFIG.replace("{UP}", up.addr).replace("{CLOSED}", str(closed_port()))
    for k, v in repl.items():
        text = text.replace("{" + k + "}", v)
    return text


# ---------------------------------------------------------------------- loader tests
BASE = {
    "services": {
        "svg-parser": {"url": "http://127.0.0.1:8101", "routes": [{"path": "/api/v1/svg/*"}]},
        "cmms-service": {
            "url": "http://127.0.0.1:8102",
            "routes": [{"path": "/api/v1/cmms/a"}, {"path": "/api/v1/cmms/b"}, {"path": "/api/v1/cmms/c"}],
        },
    },
}


class _Delete:
    """Sentinel: remove the key at the path. A stable repr keeps parametrize ids identical
    across processes (pytest-xdist workers compare collected ids; ``object()`` reprs carry
    a memory address)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def edit(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with ``value`` set at the dotted ``path`` (digits index lists)."""
    doc = copy.deepcopy(doc)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = doc
    for k in keys[:-1]:
        if isinstance(k, str) and k not in node:
            node[k] = {}
        node = node[k]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


def errors_of(doc: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_data(doc, env=env or {})
    return exc.value.errors


R0 = "services.svg-parser.routes.0"
P0 = "services.svg-parser.routes[0]"
SVC = "services.svg-parser"
