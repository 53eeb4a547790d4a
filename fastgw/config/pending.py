"""Settings that are parsed and validated but not enforced yet: THE table (L1).

Each row is ``(schema path, predicate, message)``.  When the file sets a value at that
schema path (``*`` = any key of a mapping, ``[]`` = any list item) and the predicate is
true of the decoded value, the loader adds a warning ``"<path>: <message>"``; ``--check``
prints them.  These are fail-safe settings: leaving them unenforced never lets a request
through that the config meant to stop.  (Fail-open ones, such as ``auth: true``, are
never listed here; they are refused until they work.)

When an issue lands the feature, it deletes its row.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from fastgw.config.paths import Path, render


# Empty: every setting the schema accepts is enforced.  A new row is ``(schema path,
# predicate of the decoded value, message)``.
NOT_ENFORCED: tuple[tuple[str, Callable[[Any], bool], str], ...] = ()

WATCHED = frozenset(row[0] for row in NOT_ENFORCED)


def warnings_for(recorded: Iterable[tuple[str, Path, Any]]) -> list[str]:
    """Warnings for the watched values the walker recorded, in file order."""
    rows = {spath: (pred, msg) for spath, pred, msg in NOT_ENFORCED}
    out = []
    for spath, path, value in recorded:
        row = rows.get(spath)
        if row is not None and row[0](value):
            out.append(f"{render(path)}: {row[1]}")
    return out
