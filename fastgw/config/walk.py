"""Type-driven conversion of plain YAML data into config Structs, collecting every error (L1).

msgspec stops at the first error, so the loader decodes YAML into plain objects and this
walker converts them against the schema (``msgspec.inspect.type_info``) field by field,
recording every error with its path and going on.  A Struct whose fields are all valid is
built, then its ``_check()`` runs (see ``base``); a value with a type or field error becomes
``INVALID`` and its parents are not built, but its siblings still are, so all errors come
out at once.  (``_check()`` errors are recorded but leave the object usable, so the rules
that span sections still run on it; any recorded error fails the load.)

Rules:
- errors carry a path tuple (see ``paths``), rendered by the loader;
- a *schema path* names a place in the schema whatever the names in the file:
  ``services.*.routes[].transform``.  Values at the schema paths in ``record`` are kept in
  ``recorded`` (used for cross-section checks and not-enforced warnings);
- strings that came from ``${VAR}`` substitution (``Subst``) may also stand for integers,
  numbers and booleans, and an empty one is null for optional settings; literal YAML
  strings may not (``port: "80"`` is an error, ``port: ${PORT}`` is not);
- YAML ``null`` for a section (all keys commented out) means an empty section.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Iterable

import msgspec
import msgspec.inspect as mi

from fastgw.config.base import PARSERS, Duration, Instant, Secret, Size
from fastgw.config.envsubst import SKIP, Subst
from fastgw.config.paths import Path, parse_rel, show


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()  # a value that failed (its error is already recorded)

_DESCR = {
    mi.StrType: "a string", mi.IntType: "an integer", mi.FloatType: "a number", mi.BoolType: "true or false",
    mi.NoneType: "null", mi.StructType: "an object", mi.DictType: "an object", mi.ListType: "a list",
    mi.SetType: "a list", mi.FrozenSetType: "a list", mi.VarTupleType: "a list", mi.TupleType: "a list",
}
_CUSTOM_DESCR = {Duration: "a duration like '30s'", Size: "a size like '1m'", Secret: "a string",
                 Instant: "a date like 2027-01-01"}


def describe(t: Any) -> str:
    t = _unwrap(t)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(show(x) for x in t.values)
    if isinstance(t, mi.CustomType):
        return _CUSTOM_DESCR.get(t.cls, t.cls.__name__)
    if isinstance(t, mi.UnionType):
        parts: list[str] = []
        for d in (describe(x) for x in t.types):
            if d not in parts:
                parts.append(d)
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    return _DESCR.get(type(t), type(t).__name__)


def _unwrap(t: Any) -> Any:
    return t.type if isinstance(t, mi.Metadata) else t


def did_you_mean(key: str, known) -> str:
    """``"; did you mean `rate_limit`?"`` for the closest known key, or ``""``."""
    import difflib

    norm = {k.replace("-", "_").lower(): k for k in known}
    k = key.replace("-", "_").lower()
    if k in norm:
        return f"; did you mean `{norm[k]}`?"
    squashed = {n.replace("_", ""): orig for n, orig in norm.items()}
    if k.replace("_", "") in squashed:
        return f"; did you mean `{squashed[k.replace('_', '')]}`?"
    best = difflib.get_close_matches(k, list(norm), n=1, cutoff=0.75)
    return f"; did you mean `{norm[best[0]]}`?" if best else ""


class Walker:
    """Converts plain data against a schema; see the module doc for the rules."""

    def __init__(self, record: Iterable[str] = ()) -> None:
        self.errors: list[tuple[Path, str]] = []
        self.record = frozenset(record)
        self.recorded: list[tuple[str, Path, Any]] = []  # (schema path, path, value)

    def error(self, path: Path, msg: str) -> None:
        self.errors.append((path, msg))

    def _note(self, spath: str, path: Path, value: Any) -> None:
        if spath in self.record and value is not INVALID:
            self.recorded.append((spath, path, value))

    def convert(self, t: Any, v: Any, path: Path, spath: str) -> Any:
        """``v`` converted to type info ``t``, or INVALID (with its errors recorded)."""
        if v is SKIP:
            return INVALID
        try:
            meth = getattr(self, "_" + type(t).__name__)
        except AttributeError:
            raise TypeError(f"config schema type {t!r} at {spath!r} is not supported by the loader") from None
        return meth(t, v, path, spath)

    # -- wrappers -------------------------------------------------------------------

    def _Metadata(self, t: mi.Metadata, v: Any, path: Path, spath: str) -> Any:
        r = self.convert(t.type, v, path, spath)
        check = (t.extra or {}).get("check")
        if r is INVALID or check is None:
            return r
        try:
            return check(r)
        except ValueError as e:
            self.error(path, str(e))
            return INVALID

    def _UnionType(self, t: mi.UnionType, v: Any, path: Path, spath: str) -> Any:
        has_none = any(isinstance(x, mi.NoneType) for x in t.types)
        if has_none and (v is None or (isinstance(v, Subst) and v == "")):
            return None
        candidates = [x for x in t.types if _accepts(_unwrap(x), v)]
        structs = [x for x in candidates if isinstance(_unwrap(x), mi.StructType)]
        if len(structs) > 1:
            picked = self._pick_tagged([_unwrap(x) for x in structs], v, path)
            if picked is None:
                return INVALID
            candidates = [picked]
        if not candidates:
            self.error(path, f"expected {describe(t)}, got {show(v)}")
            return INVALID
        for c in candidates[:-1]:
            n_err, n_rec = len(self.errors), len(self.recorded)
            r = self.convert(c, v, path, spath)
            if len(self.errors) == n_err:
                return r
            del self.errors[n_err:], self.recorded[n_rec:]
        return self.convert(candidates[-1], v, path, spath)

    def _pick_tagged(self, structs: list[mi.StructType], v: dict, path: Path) -> Any:
        field = structs[0].tag_field
        tags = {s.tag: s for s in structs}
        if field not in v:
            self.error(path + (field,), "missing required field")
            return None
        if not isinstance(v[field], (str, int)) or v[field] not in tags:
            self.error(path + (field,), f"expected one of {', '.join(show(x) for x in tags)}, got {show(v[field])}")
            return None
        return tags[v[field]]

    # -- containers -----------------------------------------------------------------

    def _StructType(self, t: mi.StructType, v: Any, path: Path, spath: str) -> Any:
        if v is None:
            v = {}
        if not isinstance(v, dict):
            self.error(path, f"expected an object, got {show(v)}")
            return INVALID
        by_key = {f.encode_name: f for f in t.fields}
        inline = next((f for f in t.fields if _is_inline(f)), None)
        kwargs: dict[str, Any] = {}
        rest: dict[Any, Any] = {}
        ok = True
        for key, val in v.items():
            if t.tag_field is not None and key == t.tag_field:
                continue
            f = by_key.get(key) if isinstance(key, str) else None
            if f is None or f is inline:
                if inline is not None:
                    rest[key] = val
                elif t.forbid_unknown_fields:
                    self.error(path + (str(key),), "unknown field" + did_you_mean(str(key), by_key))
                    ok = False
                continue
            fspath = f"{spath}.{key}" if spath else key
            r = self.convert(f.type, val, path + (key,), fspath)
            self._note(fspath, path + (key,), r)
            if r is INVALID:
                ok = False
            else:
                kwargs[f.name] = r
        if inline is not None and rest:
            r = self.convert(inline.type, rest, path, spath)
            if r is INVALID:
                ok = False
            else:
                kwargs[inline.name] = r
        for f in t.fields:
            if f.required and f.encode_name not in v:
                self.error(path + (f.encode_name,), "missing required field")
                ok = False
        if not ok:
            return INVALID
        try:
            obj = t.cls(**kwargs)
        except (ValueError, TypeError) as e:  # from __post_init__
            self.error(*_locate(path, str(e), by_key))
            return INVALID
        check = getattr(obj, "_check", None)
        if check is not None:  # its errors leave a well-typed object: parents and cross checks go on
            for rel, msg in check():
                self.error(path + parse_rel(rel), msg)
        return obj

    def _DictType(self, t: mi.DictType, v: Any, path: Path, spath: str) -> Any:
        if v is None:
            v = {}
        if not isinstance(v, dict):
            self.error(path, f"expected an object, got {show(v)}")
            return INVALID
        out: dict[Any, Any] = {}
        ok = True
        vspath = f"{spath}.*" if spath else "*"
        for key, val in v.items():
            kp = path + (str(key),)
            k = self.convert(t.key_type, key, kp, vspath)
            r = self.convert(t.value_type, val, kp, vspath)
            self._note(vspath, kp, r)
            if k is INVALID or r is INVALID:
                ok = False
            elif k in out:
                self.error(kp, f"duplicate key: the same as an earlier key once normalised ({show(k)})")
                ok = False
            else:
                out[k] = r
        return out if ok and self._length(t, out, path) else INVALID

    def _ListType(self, t: Any, v: Any, path: Path, spath: str) -> Any:
        if not isinstance(v, list):
            self.error(path, f"expected a list, got {show(v)}")
            return INVALID
        out = []
        ok = True
        ispath = spath + "[]"
        for i, item in enumerate(v):
            r = self.convert(t.item_type, item, path + (i,), ispath)
            self._note(ispath, path + (i,), r)
            ok = ok and r is not INVALID
            out.append(r)
        if not ok or not self._length(t, out, path):
            return INVALID
        return {mi.SetType: set, mi.FrozenSetType: frozenset, mi.VarTupleType: tuple}.get(type(t), list)(out)

    _SetType = _FrozenSetType = _VarTupleType = _ListType

    def _length(self, t: Any, v: Any, path: Path) -> bool:
        lo, hi = getattr(t, "min_length", None), getattr(t, "max_length", None)
        if lo is not None and len(v) < lo:
            self.error(path, "must not be empty" if lo == 1 else f"must have at least {lo} items")
            return False
        if hi is not None and len(v) > hi:
            self.error(path, f"must have at most {hi} items")
            return False
        return True

    # -- scalars --------------------------------------------------------------------

    def _AnyType(self, t: Any, v: Any, path: Path, spath: str) -> Any:
        return _plain(v)

    def _NoneType(self, t: Any, v: Any, path: Path, spath: str) -> Any:
        if v is None:
            return None
        self.error(path, f"expected null, got {show(v)}")
        return INVALID

    def _BoolType(self, t: Any, v: Any, path: Path, spath: str) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, Subst) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        self.error(path, f"expected true or false, got {show(v)}")
        return INVALID

    def _IntType(self, t: mi.IntType, v: Any, path: Path, spath: str) -> Any:
        n = v
        if isinstance(v, Subst):
            try:
                n = int(v.strip())
            except ValueError:
                pass
        if not isinstance(n, int) or isinstance(n, bool):
            self.error(path, f"expected an integer, got {show(v)}")
            return INVALID
        return n if self._bounds(t, n, path) else INVALID

    def _FloatType(self, t: mi.FloatType, v: Any, path: Path, spath: str) -> Any:
        n = v
        if isinstance(v, Subst):
            try:
                n = float(v.strip())
            except ValueError:
                pass
        if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n):
            self.error(path, f"expected a number, got {show(v)}")
            return INVALID
        return float(n) if self._bounds(t, n, path) else INVALID

    def _bounds(self, t: Any, n: float, path: Path) -> bool:
        ge, gt, le, lt = t.ge, t.gt, t.le, t.lt
        if ge is not None and le is not None and not ge <= n <= le:
            msg = f"must be between {ge} and {le}, got {n}"
        elif ge is not None and n < ge:
            msg = f"must be at least {ge}, got {n}"
        elif gt is not None and n <= gt:
            msg = f"must be greater than {gt}, got {n}"
        elif le is not None and n > le:
            msg = f"must be at most {le}, got {n}"
        elif lt is not None and n >= lt:
            msg = f"must be less than {lt}, got {n}"
        elif t.multiple_of is not None and n % t.multiple_of:
            msg = f"must be a multiple of {t.multiple_of}, got {n}"
        else:
            return True
        self.error(path, msg)
        return False

    def _StrType(self, t: mi.StrType, v: Any, path: Path, spath: str) -> Any:
        if not isinstance(v, str):
            self.error(path, f"expected a string, got {show(v)}")
            return INVALID
        s = str(v)
        if t.min_length is not None and len(s) < t.min_length:
            msg = "must not be empty" if t.min_length == 1 else f"must be at least {t.min_length} characters"
        elif t.max_length is not None and len(s) > t.max_length:
            msg = f"must be at most {t.max_length} characters"
        elif t.pattern is not None and not re.search(t.pattern, s):
            msg = f"must match the pattern {t.pattern!r}, got {show(s)}"
        else:
            return s
        self.error(path, msg)
        return INVALID

    def _LiteralType(self, t: mi.LiteralType, v: Any, path: Path, spath: str) -> Any:
        for x in t.values:
            if type(x) is type(_plain(v)) and x == v:
                return x
        self.error(path, f"expected {describe(t)}, got {show(v)}")
        return INVALID

    def _EnumType(self, t: mi.EnumType, v: Any, path: Path, spath: str) -> Any:
        try:
            return msgspec.convert(_plain(v), t.cls)
        except msgspec.ValidationError:
            values = ", ".join(show(m.value) for m in t.cls)
            self.error(path, f"expected one of {values}, got {show(v)}")
            return INVALID

    def _CustomType(self, t: mi.CustomType, v: Any, path: Path, spath: str) -> Any:
        parse = PARSERS.get(t.cls)
        if parse is None:
            raise TypeError(f"config schema type {t.cls!r} at {spath!r} has no parser in base.PARSERS")
        try:
            return parse(_plain(v))
        except ValueError as e:
            self.error(path, str(e))
            return INVALID


_FIELD_PREFIX = re.compile(r"([A-Za-z_]\w*)((?:\[\d+\])*): (.+)", re.S)


def _locate(path: Path, msg: str, fields: dict) -> tuple[Path, str]:
    """A ``__post_init__`` message "field: text" is reported at that field's path."""
    m = _FIELD_PREFIX.fullmatch(msg)
    if m and m.group(1) in fields:
        return path + parse_rel(m.group(1) + m.group(2)), m.group(3)
    return path, msg


def _plain(v: Any) -> Any:
    """``v`` with Subst strings turned back into plain str (for untyped values)."""
    if isinstance(v, Subst):
        return str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _is_inline(f: mi.Field) -> bool:
    return isinstance(f.type, mi.Metadata) and bool((f.type.extra or {}).get("inline"))


_ACCEPT = {
    type(None): (mi.NoneType,),
    bool: (mi.BoolType,),
    int: (mi.IntType, mi.FloatType, mi.CustomType, mi.LiteralType, mi.EnumType),
    float: (mi.FloatType, mi.CustomType),
    str: (mi.StrType, mi.LiteralType, mi.CustomType, mi.EnumType),
    dict: (mi.StructType, mi.DictType),
    list: (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType),
    datetime.date: (mi.CustomType,),  # YAML dates and timestamps (base.Instant)
    datetime.datetime: (mi.CustomType,),
}


def _accepts(t: Any, v: Any) -> bool:
    """Whether type info ``t`` is worth trying for a value of ``v``'s kind (union dispatch)."""
    if isinstance(t, mi.AnyType):
        return True
    kinds = _ACCEPT.get(bool if isinstance(v, bool) else str if isinstance(v, str) else type(v), ())
    if isinstance(v, Subst):
        kinds += (mi.IntType, mi.FloatType, mi.BoolType)
    if not isinstance(t, kinds):
        return False
    if isinstance(t, mi.LiteralType):
        return any(type(x) is type(_plain(v)) for x in t.values)
    return True
