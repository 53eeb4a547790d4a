"""Routing (L3): the compiled route table and its matcher.

``Router(entries)`` compiles ``(route_cfg, target)`` pairs once per config snapshot;
``Router.match(...)`` picks the target for one request.  The rules (specificity,
conditions, methods, encoded slashes) are in ``fastgw.routing.router``'s docstring, the
route-rule grammar in ``fastgw.routing.compile``'s.
"""

from fastgw.routing.router import Router

__all__ = ["Router"]
