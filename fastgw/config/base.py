"""Building blocks of the config schema (L1).

Every section is a frozen msgspec Struct deriving from ``Base`` (unknown keys are
errors).  Special scalar types are decoded by ``dec_hook`` in the loader:

- ``Duration``: a float number of seconds, written ``250ms``, ``30s``, ``5m``, ``24h``, ``7d``
  (a bare number means seconds).
- ``Size``: an int number of bytes, written ``512``, ``16k``, ``1m``, ``2g`` (powers of 1024).
- ``Secret``: a str that is redacted (``"***"``) wherever config is printed or logged.

Constraints go in ``Annotated[..., msgspec.Meta(...)]`` (STYLE.md item 11).
"""

from __future__ import annotations

import msgspec


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section."""


class Duration(float):
    """Seconds; decoded from '250ms', '30s', '5m', '24h', '7d' or a number."""

    __slots__ = ()


class Size(int):
    """Bytes; decoded from '512', '16k', '1m', '2g' or a number."""

    __slots__ = ()


class Secret(str):
    """A secret string; printed as '***'."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_duration(v) -> Duration:
    if isinstance(v, bool):
        raise ValueError(f"expected a duration like '30s', got {v!r}")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"expected a non-negative duration, got {v!r}")
        return Duration(v)
    if isinstance(v, str):
        s = v.strip()
        for unit in ("ms", "s", "m", "h", "d"):
            if s.endswith(unit):
                num = s[: -len(unit)]
                if unit == "s" and num.endswith("m"):  # "ms" handled first
                    continue
                try:
                    n = float(num)
                except ValueError:
                    break
                if n < 0:
                    break
                return Duration(n * _DUR_UNITS[unit])
    raise ValueError(f"expected a duration like '30s', got {v!r}")


def parse_size(v) -> Size:
    if isinstance(v, bool):
        raise ValueError(f"expected a size like '1m', got {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"expected a non-negative size, got {v!r}")
        return Size(v)
    if isinstance(v, str):
        s = v.strip().lower()
        i = len(s)
        while i and not s[i - 1].isdigit():
            i -= 1
        num, unit = s[:i], s[i:].strip()
        if num.isdigit() and unit in _SIZE_UNITS:
            return Size(int(num) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size like '1m', got {v!r}")


def dec_hook(type_, obj):
    """msgspec decode hook for the special scalar types."""
    if type_ is Duration:
        return parse_duration(obj)
    if type_ is Size:
        return parse_size(obj)
    if type_ is Secret:
        if not isinstance(obj, str):
            raise ValueError(f"expected a string, got {type(obj).__name__}")
        return Secret(obj)
    raise NotImplementedError(type_)
