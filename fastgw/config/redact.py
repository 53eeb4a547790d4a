"""Printable form of a config, with secrets redacted (L1).

``to_printable`` is what ``--print-config`` (and any log line about config) uses: plain
builtins (dicts, lists, str, numbers) in the shape of the file, so the output loads again:
durations as float seconds, sizes as int bytes, inline fields (the rate-limit tiers) as
keys of their section, and every ``Secret`` replaced by ``"***"``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi

from fastgw.config.base import Duration, Instant, Secret, Size

REDACTED = "***"


def encode_value(obj: Any) -> Any:
    """enc_hook: Secret -> "***", Duration -> float seconds, Size -> int bytes, Instant -> ISO date."""
    if isinstance(obj, Secret):
        return REDACTED
    if isinstance(obj, Duration):
        return float(obj)
    if isinstance(obj, Size):
        return int(obj)
    if isinstance(obj, Instant):
        return obj.isoformat()
    raise NotImplementedError(f"cannot print {type(obj).__name__}")


@cache
def _inline_fields(cls: type) -> frozenset[str]:
    info = mi.type_info(cls)
    return frozenset(
        f.name for f in info.fields if isinstance(f.type, mi.Metadata) and (f.type.extra or {}).get("inline")
    )


def _flatten(obj: Any, out: Any) -> Any:
    """Move inline fields of every Struct in ``obj`` up into their parent in ``out``."""
    if isinstance(obj, msgspec.Struct):
        inline = _inline_fields(type(obj))
        for f in msgspec.structs.fields(obj):
            if f.encode_name not in out:
                continue
            value = _flatten(getattr(obj, f.name), out[f.encode_name])
            if f.name in inline:
                del out[f.encode_name]
                out.update(value)
            else:
                out[f.encode_name] = value
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out[k] = _flatten(v, out[k])
    elif isinstance(obj, (list, tuple)):
        return [_flatten(a, b) for a, b in zip(obj, out)]
    return out


def to_printable(config: msgspec.Struct, secret=None) -> dict[str, Any]:
    """The config as builtins in the file's shape, secrets replaced by ``"***"`` (or by
    ``secret(value)`` when given: a digest to compare, a ``${VAR}`` to print)."""
    if secret is None:
        return _flatten(config, msgspec.to_builtins(config, enc_hook=encode_value))

    def hook(obj: Any) -> Any:
        return secret(obj) if isinstance(obj, Secret) else encode_value(obj)
    return _flatten(config, msgspec.to_builtins(config, enc_hook=hook))
