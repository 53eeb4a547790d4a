"""``${VAR}`` and ``${VAR:-default}`` substitution in config values (L1).

Runs on the plain data decoded from YAML, before the schema walk, so a reference can sit
in any string value whatever its field's type (``port: ${PORT:-8080}``); keys are never
substituted.  Rules:

- ``${VAR}``: the variable's value; unset is an error naming the variable and the path;
- ``${VAR:-default}``: the default when the variable is unset *or empty* (as in a shell);
  the default is literal text (no nested references, no ``}``);
- ``$${`` is a literal ``${``; any other ``$`` is kept as written;
- a malformed reference (``${}``, ``${1X}``, ``${X`` never closed) is an error;
- error messages never include a variable's value.

Substituted strings are returned as ``Subst`` so the walker can read them as numbers
or booleans, and treat an empty one as null for an optional setting.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from fastgw.config.paths import Path


class Subst(str):
    """A string produced by ``${VAR}`` substitution."""

    __slots__ = ()


class _Skip:
    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Any = _Skip()  # a value whose substitution failed (its error is already reported)

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Report = Callable[[Path, str], None]


def substitute(data: Any, env: Mapping[str, str], error: Report, path: Path = ()) -> Any:
    """A copy of ``data`` with references in string values expanded (SKIP where one failed)."""
    if isinstance(data, str):
        return expand(data, env, error, path) if "$" in data else data
    if isinstance(data, dict):
        return {k: substitute(v, env, error, path + (str(k),)) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, env, error, path + (i,)) for i, v in enumerate(data)]
    return data


def expand(s: str, env: Mapping[str, str], error: Report, path: Path) -> Any:
    out: list[str] = []
    pos = 0
    from_env = failed = False
    for m in _REF.finditer(s):
        literal = s[pos : m.start()]
        pos = m.end()
        if "${" in literal:
            break  # an unterminated reference before this one; reported below
        out.append(literal)
        if m.group(0) == "$${":
            out.append("${")
            continue
        body = m.group(1)
        name, sep, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            error(path, f"invalid variable reference '${{{body}}}': expected ${{NAME}} or ${{NAME:-default}}")
            failed = True
            continue
        value = env.get(name)
        if value is None or (sep and value == ""):
            if not sep:
                error(path, f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
                failed = True
                continue
            value = default
        out.append(value)
        from_env = True
    else:
        literal = s[pos:]
        if "${" not in literal:
            out.append(literal)
            if failed:
                return SKIP
            result = "".join(out)
            return Subst(result) if from_env else result
    error(path, "unterminated variable reference: '${' without a closing '}'")
    return SKIP
