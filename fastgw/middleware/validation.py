"""Request validation: content type, required headers and query parameters, JSON Schema (L6).

What it owns: refusing, before anything reaches the upstream, a request that breaks its
route's ``validate`` block, with a problem+json body that names the failing field (RFC
9457 §3 ``errors`` member: ``{"pointer": "#/items/3/qty", "detail": ...}`` for the body,
``{"header": ...}`` / ``{"parameter": ...}`` for the head).

Two phases:

1. ``request_filter`` (head only, before any body byte is read): required headers and
   query parameters (present and non-empty) -> 400; a body whose media type is not
   allowed, or a JSON body under a schema with a ``Content-Encoding`` other than gzip,
   br or zstd (or a list of codings) -> 415 with ``Accept-Encoding: gzip, br, zstd``; a
   missing body when ``body_required`` -> 400.  It marks the request for phase 2 only
   when a schema applies to it (noting the coding to decode).
2. ``request_body_filter(ctx, body)`` (the engine contract below): decode the whole body and
   validate it.  Invalid JSON, a nesting too deep to decode, or a schema failure -> 400.
   An encoded body (Content-Encoding) is decoded first, for the check only (the upstream gets
   the bytes as received), with the route's ``max_body_size`` applied to the *decoded*
   size: the decoder stops and the answer is 413 as soon as its output would pass the
   limit, so a decompression bomb costs at most that many bytes and the time to make
   them (``fastgw.compress.codecs.decode``).  A corrupt or truncated stream -> 400.

Engine contract relied on (``needs_body()``/``request_body_filter``):

- ``needs_body()`` is asked of the *instance* when the chain is compiled; it is True only
  when the block has a ``schema``.  Then the engine buffers the request body, within the
  route's ``max_body_size`` (413 past it, before it is read whole), and calls
  ``request_body_filter(ctx, body)`` once with all of it (``b""`` for none) before opening the
  upstream request.  None = forward the (buffered) body; a Reply = answer locally, which
  then passes the response filters of the middlewares that ran.  Chains whose
  middlewares all answer ``needs_body()`` False stream bodies as before.

Choices, measured on this machine (docs/security.md#measurements):

- jsonschema-rs, not jsonschema: the pure-Python validator would stall the worker's event
  loop on a large body (two orders of magnitude slower at any size).  Compiled once per config; remote ``$ref`` never fetched;
  ``pattern`` regexes that need backtracking run under a step budget (ReDoS).
- msgspec.json, not orjson, decodes the body: as fast, keeps
  integers exact, and refuses nesting deeper than Python's recursion limit with a
  RecursionError, where the installed orjson parsed 500,000 levels and crashed the
  process (and jsonschema-rs overflows its stack validating ~100,000 levels).
- Duplicate object keys: the last one wins (as in most upstream parsers, including
  Python's json, Go's encoding/json and JavaScript's JSON.parse); an upstream that keeps
  the first one would see a value the schema did not check.
"""

from __future__ import annotations

from itertools import islice
from urllib.parse import unquote_to_bytes

import msgspec

from fastgw.compress.codecs import BadEncoding, TooLarge, decode
from fastgw.config.security import ValidateConfig, compile_schema
from fastgw.http.messages import Reply
from fastgw.pipeline.middleware import Middleware

_decode = msgspec.json.Decoder().decode
# request codings decoded for validation (x-gzip: RFC 9110 §8.4.1.3); the 415 lists them
_CODINGS = {b"gzip": "gzip", b"x-gzip": "gzip", b"br": "br", b"zstd": "zstd"}
_ACCEPTED = b"gzip, br, zstd"
_MSG_MAX = 200  # validator messages quote the offending value; keep the problem body small
_NOTE = "validation"


class Validation(Middleware):
    name = "validation"

    def __init__(self, cfg: ValidateConfig, deps=None) -> None:
        super().__init__(cfg, deps)
        self._validator = (compile_schema(cfg.schema, validate_formats=cfg.validate_formats)
                           if cfg.schema is not None else None)
        self._max_errors = cfg.max_errors
        self._body_required = cfg.body_required
        self._headers = tuple((h.lower().encode("ascii"), h) for h in cfg.required_headers)
        self._query = tuple((q.encode("utf-8"), q) for q in cfg.required_query)
        types = [t.strip().lower() for t in cfg.content_types]
        self._types_exact = frozenset(t.encode("ascii") for t in types if not t.endswith("/*"))
        self._types_prefix = tuple(t[:-1].encode("ascii") for t in types if t.endswith("/*"))
        self._json_only = not types and self._validator is not None
        self._check_type = bool(types) or self._validator is not None
        self._expected = ", ".join(types) if types else "application/json"

    # -- hooks ----------------------------------------------------------------------

    def needs_body(self) -> bool:
        """Only a schema needs the body (head checks alone keep the body streaming)."""
        return self._validator is not None

    def request_filter(self, ctx):
        """Head checks (400/415); marks the request for ``request_body_filter`` when a schema applies."""
        for lname, name in self._headers:
            val = ctx.header(lname)
            if val is None or not val.strip():
                return self._missing(ctx, "header", [n for ln, n in self._headers if not _has_header(ctx, ln)])
        if self._query:
            have = _query_names(ctx.request.query)
            missing = [name for raw, name in self._query if raw not in have]
            if missing:
                return self._missing(ctx, "parameter", missing)
        if not (ctx.request.chunked or ctx.request.content_length):
            if self._body_required:
                return ctx.problem(400, "a request body is required", kind="bad_request",
                                   extra={"errors": [{"pointer": "#", "detail": "a request body is required"}]})
            return None
        if not self._check_type:
            return None
        ct = ctx.header(b"content-type")
        if ct is None:
            return self._unsupported(ctx, f"Content-Type is required; expected {self._expected}")
        essence = ct.partition(b";")[0].strip().lower()
        is_json = essence == b"application/json" or (essence.endswith(b"+json") and b"/" in essence)
        if self._json_only:
            ok = is_json
        else:
            ok = essence in self._types_exact or any(essence.startswith(p) for p in self._types_prefix)
        if not ok:
            shown = essence[:100].decode("latin-1")
            return self._unsupported(ctx, f"Content-Type {shown} is not accepted; expected {self._expected}")
        if self._validator is not None and is_json:
            ce = ctx.header(b"content-encoding")
            coding = True  # (the note: True = identity, else the coding to decode)
            if ce is not None:
                c = ce.strip().lower()
                if c not in (b"", b"identity"):
                    coding = _CODINGS.get(c)
                    if coding is None:
                        shown = c[:40].decode("latin-1")
                        return self._unsupported(
                            ctx, f"Content-Encoding {shown} is not accepted; use gzip, br, zstd or none",
                            headers=[(b"accept-encoding", _ACCEPTED)], header="Content-Encoding")
            ctx.notes[_NOTE] = coding
        return None

    def request_body_filter(self, ctx, body: bytes):
        """Validate the whole JSON body against the schema: None when valid, else a 400 reply."""
        coding = ctx.notes.get(_NOTE)
        if not coding:
            return None
        if coding is not True and body:
            # decoded for the check only: the upstream gets the body as received
            limit = ctx.route.max_body
            try:
                body = decode(coding, body, limit)
            except TooLarge:
                return ctx.problem(413, f"request body exceeds {limit} bytes once decoded ({coding})",
                                   kind="body_too_large")
            except BadEncoding as e:
                return self._bad_body(ctx, "#", str(e))
        if not body:
            if self._body_required:
                return self._bad_body(ctx, "#", "a request body is required")
            return self._bad_body(ctx, "#", "the body is empty; expected a JSON document")
        try:
            doc = _decode(body)
        except msgspec.DecodeError as e:
            return self._bad_body(ctx, "#", f"not valid JSON: {e}")
        except UnicodeDecodeError:
            return self._bad_body(ctx, "#", "not valid JSON: the body is not UTF-8")
        except RecursionError:
            return self._bad_body(ctx, "#", "the JSON is nested too deeply")
        v = self._validator
        if v.is_valid(doc):
            return None
        errors = []
        try:
            for e in islice(v.iter_errors(doc), self._max_errors):
                errors.append({"pointer": _pointer(e), "detail": _short(e.message)})
        except (ValueError, RecursionError):  # too deep to report; is_valid already said no
            pass
        if not errors:
            errors.append({"pointer": "#", "detail": "does not match the schema"})
        first = errors[0]
        return ctx.problem(400, f"request body field {first['pointer']}: {first['detail']}",
                           kind="bad_request", extra={"errors": errors})

    # -- replies --------------------------------------------------------------------

    @staticmethod
    def _missing(ctx, where: str, names: list[str]) -> Reply:
        what = "header" if where == "header" else "query parameter"
        errors = [{where: n, "detail": f"required {what} is missing or empty"} for n in names]
        return ctx.problem(400, f"missing required {what} {names[0]}", kind="bad_request", extra={"errors": errors})

    @staticmethod
    def _unsupported(ctx, detail: str, headers=None, header: str = "Content-Type") -> Reply:
        return ctx.problem(415, detail, kind="unsupported_media_type", headers=headers,
                           extra={"errors": [{"header": header, "detail": detail}]})

    @staticmethod
    def _bad_body(ctx, pointer: str, detail: str) -> Reply:
        return ctx.problem(400, f"request body: {detail}", kind="bad_request",
                           extra={"errors": [{"pointer": pointer, "detail": detail}]})


def _has_header(ctx, lname: bytes) -> bool:
    val = ctx.header(lname)
    return val is not None and bool(val.strip())


def _query_names(q: bytes) -> set[bytes]:
    """Names of the query parameters that have a non-empty value (percent-decoded)."""
    names = set()
    if not q:
        return names
    for part in q.split(b"&"):
        name, _eq, val = part.partition(b"=")
        if not name or not val:
            continue
        if b"%" in name or b"+" in name:
            name = unquote_to_bytes(name.replace(b"+", b" "))
        names.add(name)
    return names


def _pointer(err) -> str:
    """RFC 6901 pointer (as a URI fragment) to the field an error is about."""
    parts = list(err.instance_path)
    kind = err.kind
    prop = getattr(kind, "property", None)  # "required": the missing member
    if isinstance(prop, str):
        parts.append(prop)
    else:
        unexpected = getattr(kind, "unexpected", None)  # additional/unevaluated properties
        if unexpected:
            parts.append(unexpected[0])
    return "#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _short(msg: str) -> str:
    msg = msg.split("\n", 1)[0]
    return msg if len(msg) <= _MSG_MAX else msg[: _MSG_MAX - 3] + "..."


def build(root_cfg, service_cfg, route_cfg, deps):
    """The route's validation middleware, or None when it has no ``validate`` block."""
    cfg = route_cfg.validate if route_cfg is not None else None
    if cfg is None or not (cfg.content_types or cfg.required_headers or cfg.required_query
                           or cfg.schema is not None or cfg.body_required):
        return None
    return Validation(cfg, deps)
