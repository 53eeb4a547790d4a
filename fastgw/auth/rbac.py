"""Route role policies: who may call a route, decided from the verified token's roles.

A route's ``roles`` is either a list (any one of the roles suffices, for every method) or
a map from method to roles::

    roles: {GET: [viewer, editor, admin], POST: [editor, admin], PUT: [editor, admin],
            DELETE: [admin]}

Rules:

1. Fail closed: a method missing from the map is denied, unless a ``"*"`` entry gives
   the roles for every other method.  ``HEAD`` falls back to ``GET``'s entry (it is a GET
   without a body) before ``"*"``.
2. An empty role list means "any valid token".
3. Roles compare exactly (case-sensitive), as the issuer wrote them.

``Policy.allows`` is one dict lookup and one ``isdisjoint``.
"""

from __future__ import annotations

_DENY = None


class Policy:
    __slots__ = ("table", "default", "names")

    def __init__(self, roles: list[str] | dict[str, list[str]] | None) -> None:
        table: dict[str, frozenset | None] = {}
        default: frozenset | None = frozenset()
        if isinstance(roles, dict):
            default = _DENY
            for m, rs in roles.items():
                if m == "*":
                    default = frozenset(rs or ())
                else:
                    table[m.upper()] = frozenset(rs or ())
            if "GET" in table and "HEAD" not in table:
                table["HEAD"] = table["GET"]
        elif roles:
            default = frozenset(roles)
        self.table = table
        self.default = default
        self.names = frozenset(r for v in [*table.values(), default] if v for r in v)

    def allows(self, method: str, roles: frozenset) -> bool:
        need = self.table.get(method, self.default)
        if need is _DENY:
            return False
        return not need or not need.isdisjoint(roles)

    @property
    def restricts(self) -> bool:
        """True when some method needs more than a valid token."""
        return bool(self.names) or self.default is _DENY
