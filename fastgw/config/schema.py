"""JSON Schema of the config file, for editors (L1).

``json_schema()`` is msgspec's schema of ``Config`` with the special scalars described as
they are written (``"30s"``, ``"1m"``) and the inline rate-limit tiers shown as extra keys
of ``rate_limit``.  Semantic rules (URL syntax, unique names, ...) are the loader's only.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec._json_schema as _js

from fastgw.config.base import Duration, Instant, Secret, Size
from fastgw.config.redact import encode_value
from fastgw.config.root import Config

_DURATION_RE = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
_SIZE_RE = r"^\d+\s*([kKmMgG][bB]?|[bB])?$"
_SCALARS = {
    Duration: {
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION_RE}],
        "description": "seconds, or a duration like '250ms', '30s', '5m', '24h', '7d', '1h30m'",
    },
    Size: {
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE_RE}],
        "description": "bytes, or a size like '16k', '1m', '2g' (powers of 1024)",
    },
    Secret: {"type": "string", "description": "a secret (redacted when printed); use ${VAR}"},
    Instant: {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"},
                        {"type": "number"}],
              "description": "a date (2027-01-01, midnight UTC), an RFC 3339 timestamp, or Unix seconds"},
}


def _hook(t: type) -> dict[str, Any]:
    if t in _SCALARS:
        return _SCALARS[t]
    raise NotImplementedError(t)


def json_schema() -> dict[str, Any]:
    # msgspec encodes field defaults with a bare to_builtins, which refuses the Duration
    # and Size subclasses; lend it the printer's encoder while the schema is built.
    # msgspec (0.23) has no public way: json.schema() takes a schema_hook for
    # types but no enc_hook for default values.
    orig = _js.to_builtins
    _js.to_builtins = lambda obj, **kw: orig(obj, enc_hook=encode_value, **kw)
    try:
        schema = msgspec.json.schema(Config, schema_hook=_hook)
    finally:
        _js.to_builtins = orig
    section = schema.get("$defs", {}).get("RateLimitSection")
    if section is not None:
        tiers = section["properties"].pop("tiers")
        section["additionalProperties"] = tiers["additionalProperties"]
    return schema
