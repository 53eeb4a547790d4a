"""Building blocks of the config schema (L1).

Every section is a frozen msgspec Struct deriving from ``Base`` (unknown keys are
errors).  Special scalar types are decoded by ``dec_hook`` (and by the loader's walker,
which calls the same parsers):

- ``Duration``: a float number of seconds, written ``250ms``, ``30s``, ``5m``, ``24h``, ``7d``,
  or a compound such as ``1h30m`` (a bare number means seconds).
- ``Size``: an int number of bytes, written ``512``, ``16k``, ``1m``, ``2g`` (powers of 1024).
- ``Secret``: a str that is redacted (``"***"``) wherever config is printed or logged.

Constraints go in ``Annotated[..., msgspec.Meta(...)]`` (STYLE.md item 11).  A semantic
check that msgspec cannot express is attached the same way, with ``Check(fn)``: ``fn``
receives the decoded value, returns it (possibly normalised, e.g. upper-cased) or raises
``ValueError`` whose text becomes the error message at that field's path.  A Struct may
also define ``_check(self)`` yielding ``(relative_path, message)`` pairs for rules that span
several of its fields; the loader calls it once the Struct is built.

Rule: messages never echo the value of a ``Secret``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable

import msgspec


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section."""


class Duration(float):
    """Seconds; decoded from '250ms', '30s', '5m', '24h', '7d', '1h30m' or a number."""

    __slots__ = ()


class Size(int):
    """Bytes; decoded from '512', '16k', '1m', '2g' or a number."""

    __slots__ = ()


class Secret(str):
    """A secret string; printed as '***'."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


def Check(fn: Callable[[Any], Any], **constraints: Any) -> msgspec.Meta:
    """``Annotated[T, Check(fn)]``: run ``fn`` on the decoded value (see module doc)."""
    return msgspec.Meta(extra={"check": fn}, **constraints)


_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
_SIZE_RE = re.compile(r"(\d+)\s*([a-z]*)")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return repr(v)


def parse_duration(v: Any) -> Duration:
    """'250ms' | '30s' | '5m' | '24h' | '7d' | '1h30m' | a number of seconds -> Duration."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"expected a non-negative duration, got {_show(v)}")
        return Duration(v)
    if isinstance(v, str):
        s = v.strip()
        pos, total = 0, 0.0
        for m in _DUR_PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
            pos = m.end()
        else:
            if s and pos == len(s):
                return Duration(total)
        try:  # a bare number in a string, e.g. from ${TIMEOUT}
            n = float(s)
        except ValueError:
            pass
        else:
            if math.isfinite(n) and n >= 0:
                return Duration(n)
    raise ValueError(f"expected a duration like '30s', got {_show(v)}")


def parse_size(v: Any) -> Size:
    """'512' | '16k' | '1m' | '2g' (powers of 1024, optional 'b'/'kb'/'mb'/'gb') -> Size."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 0:
            raise ValueError(f"expected a non-negative size, got {v!r}")
        return Size(v)
    if isinstance(v, str):
        m = _SIZE_RE.fullmatch(v.strip().lower())
        if m and m.group(2) in _SIZE_UNITS:
            return Size(int(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"expected a size like '1m', got {_show(v)}")


def parse_secret(v: Any) -> Secret:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return Secret(v)


class Instant(float):
    """A point in time as Unix seconds; decoded from a YAML date (``2027-01-01``, midnight
    UTC), an RFC 3339 timestamp (``2027-01-01T12:00:00Z``; without an offset: UTC) or a
    number of Unix seconds."""

    __slots__ = ()

    def isoformat(self) -> str:
        """``2027-01-01`` at midnight UTC, else ``2027-01-01T12:00:00Z`` (loads again)."""
        import datetime as dt

        d = dt.datetime.fromtimestamp(float(self), dt.timezone.utc)
        return d.date().isoformat() if d.time() == dt.time(0) else d.isoformat().replace("+00:00", "Z")


def parse_instant(v: Any) -> Instant:
    """date | datetime | 'YYYY-MM-DD' | RFC 3339 string | Unix seconds -> Instant."""
    import datetime as dt

    if isinstance(v, str):
        s = v.strip()
        try:
            v = dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if "T" in s or " " in s else dt.date.fromisoformat(s)
        except ValueError:
            raise ValueError(f"expected a date like 2027-01-01 or 2027-01-01T12:00:00Z, got {_show(v)}") from None
    if isinstance(v, dt.datetime):
        return Instant((v if v.tzinfo is not None else v.replace(tzinfo=dt.timezone.utc)).timestamp())
    if isinstance(v, dt.date):
        return Instant(dt.datetime(v.year, v.month, v.day, tzinfo=dt.timezone.utc).timestamp())
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return Instant(v)
    raise ValueError(f"expected a date like 2027-01-01 or 2027-01-01T12:00:00Z, got {_show(v)}")


PARSERS: dict[type, Callable[[Any], Any]] = {Duration: parse_duration, Size: parse_size, Secret: parse_secret,
                                             Instant: parse_instant}


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec decode hook for the special scalar types."""
    try:
        parse = PARSERS[type_]
    except KeyError:
        raise NotImplementedError(type_) from None
    return parse(obj)


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {v:g}s")
    return v


PositiveDuration = Annotated[Duration, Check(_positive)]
