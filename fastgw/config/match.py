"""Schema of route conditions: ``match`` and regex paths (L1).

A route's ``match`` object is a conjunction: every key it sets must hold.

    headers: {X-Version: "2"}              exact value (header names case-insensitive)
    headers: {X-Debug: "*"}                present, any value
    headers: {X-Debug: {absent: true}}     not sent at all
    headers: {X-Version: {regex: "^2\\."}} the value contains a match (anchor with ^ and $)
    query:   {...}, cookies: {...}         the same four forms for query parameters and cookies
    version: "2"                           the request's API version (gateway.versioning)
    any: [{...}, {...}]                    at least one of the objects holds
    all: [{...}, {...}]                    every object holds (for nesting under any/not)
    not: {...}                             the object does not hold

Regular expressions use RE2 syntax (google-re2): linear time in the input whatever the
pattern, so a route condition cannot be turned into a CPU sink by a crafted header
(Python's ``re`` backtracks; lookaround and backreferences, which need backtracking, are
refused at load time with RE2's message).  They are compiled here once, at load, to
report errors with their path; ``fastgw.routing.conditions`` compiles them again for the
router (a Struct holds no compiled object).
"""

from __future__ import annotations

from typing import Annotated, Iterator

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check


def re2_compile(pattern: str):
    """The RE2 regex for ``pattern``; ValueError with RE2's message if it is not valid."""
    import re2  # google-re2 (see pyproject.toml: why RE2)

    opts = re2.Options()
    opts.log_errors = False  # the error goes into our message, not to stderr
    try:
        return re2.compile(pattern, opts)
    except re2.error as e:
        msg = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"invalid regular expression {pattern!r} (RE2 syntax): {msg}") from None


def _regex(p: str) -> str:
    if not p:
        raise ValueError("must not be empty")
    re2_compile(p)
    return p


Regex = Annotated[str, Check(_regex)]


def version_label(s: str) -> str:
    """An API version label: ``"2"``, ``"2.1"``, ``"v2"`` (written without the ``v``)."""
    t = s.strip()
    if t[:1] in ("v", "V"):
        t = t[1:]
    if not t or not all(c.isalnum() or c in ".-_" for c in t) or not t.isascii():
        raise ValueError(f"invalid version {s!r}: use letters, digits, '.', '-' or '_' (like \"2\" or \"2.1\")")
    return t.lower()


VersionLabel = Annotated[str, Check(version_label)]


class ValueRule(Base):
    """A condition value written as an object: ``{regex: "..."}`` or ``{absent: true}``."""

    regex: Regex | None = None
    absent: bool = False

    def _check(self) -> Iterator[tuple[str, str]]:
        if (self.regex is None) == (not self.absent):
            yield "", "give exactly one of 'regex: \"...\"' or 'absent: true'"


MatchValue = str | ValueRule


class MatchConfig(Base):
    """Conditions on the request besides path, host and method (module doc)."""

    headers: dict[Annotated[str, Check(v.header_name_lower)], MatchValue] = {}
    query: dict[Annotated[str, Check(v.non_empty)], MatchValue] = {}
    cookies: dict[Annotated[str, Check(v.header_name)], MatchValue] = {}
    version: VersionLabel | None = None
    any: Annotated[list[MatchConfig], msgspec.Meta(min_length=1)] | None = None
    all: Annotated[list[MatchConfig], msgspec.Meta(min_length=1)] | None = None
    not_: MatchConfig | None = msgspec.field(default=None, name="not")

    def _check(self) -> Iterator[tuple[str, str]]:
        for key, items in (("any", self.any), ("all", self.all)):
            for i, m in enumerate(items or ()):
                if m.count() == 0:
                    yield f"{key}[{i}]", "an empty condition holds for every request: give at least one"
        if self.not_ is not None and self.not_.count() == 0:
            yield "not", "an empty condition holds for every request, so 'not' of it for none"

    def count(self) -> int:
        """Number of leaf conditions (the precedence weight: more conditions first)."""
        n = len(self.headers) + len(self.query) + len(self.cookies) + (self.version is not None)
        for m in (self.any or ()):
            n += m.count()
        for m in (self.all or ()):
            n += m.count()
        if self.not_ is not None:
            n += self.not_.count()
        return n

    def uses_version(self) -> bool:
        """Whether a ``version`` condition appears anywhere in the tree."""
        if self.version is not None:
            return True
        subs = [*(self.any or ()), *(self.all or ()), *((self.not_,) if self.not_ is not None else ())]
        return any(m.uses_version() for m in subs)


class PathRegex(Base):
    """``path: {regex: "..."}``: the whole normalised path must match (RE2, anchored at
    both ends); named groups ``(?P<id>...)`` become path parameters like ``{id}``."""

    regex: Regex
