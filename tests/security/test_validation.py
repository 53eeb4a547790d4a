"""Request validation: head checks (request_filter) and JSON Schema on the body (body_filter)."""

from __future__ import annotations

import time

import orjson
import pytest

from fastgw.config.security import ValidateConfig
from fastgw.middleware import validation as val_mod
from fastgw.middleware.validation import Validation
from fastgw.http.request import Request
from fastgw.pipeline.ctx import Ctx
from fastgw.pipeline.middleware import Middleware

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "customer", "items"],
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"},
        "customer": {
            "type": "object", "required": ["email"],
            "properties": {"email": {"type": "string", "format": "email"}, "tier": {"enum": ["free", "pro"]}},
        },
        "items": {"type": "array", "maxItems": 100000, "items": {
            "type": "object", "required": ["sku", "qty"], "additionalProperties": False,
            "properties": {"sku": {"type": "string", "pattern": "^[a-z0-9-]{3,32}$"},
                           "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                           "note": {"type": "string", "maxLength": 500}}}},
        "a/b~c": {"type": "integer"},
    },
}
GOOD = {"order_id": "ABC-123456", "customer": {"email": "ann@example.com", "tier": "pro"},
        "items": [{"sku": "sku-001", "qty": 2}]}


def ctx_for(method="POST", headers=(), body=b"", query=b"", chunked=False):
    req = Request.build(method, b"/" + (b"?" + query if query else b""), list(headers))
    req.chunked = chunked
    req.content_length = None if chunked or method in ("GET", "HEAD") and not body else len(body)
    c = Ctx(req)
    c.request_id = "rid-v"
    return c


def run(mw, body=b"", headers=((b"Content-Type", b"application/json"),), **kw):
    """The engine's order: request_filter on the head, then body_filter with the whole body."""
    ctx = ctx_for(headers=headers, body=body, **kw)
    reply = mw.request_filter(ctx)
    if reply is None and mw.needs_body():
        reply = mw.request_body_filter(ctx, body)
    return reply


def problem_of(reply):
    assert reply.get(b"content-type") == b"application/problem+json"
    return orjson.loads(reply.body)


SCHEMA = Validation(ValidateConfig(schema=ORDER_SCHEMA))


def with_(doc, **changes):
    d = orjson.loads(orjson.dumps(doc))
    d.update(changes)
    return d


# --------------------------------------------------------------------------- body against the schema

BODY_CASES = [
    # (id, body, expected pointer of the first error or None when valid)
    ("valid", GOOD, None),
    ("wrong type deep inside", with_(GOOD, items=[{"sku": "sku-001", "qty": "2"}]), "#/items/0/qty"),
    ("below minimum", with_(GOOD, items=[{"sku": "sku-001", "qty": 1}, {"sku": "sku-002", "qty": 0}]),
     "#/items/1/qty"),
    ("missing required member named", {"order_id": "ABC-123456", "items": []}, "#/customer"),
    ("missing nested member", with_(GOOD, customer={"tier": "pro"}), "#/customer/email"),
    ("unexpected member named", with_(GOOD, admin=True), "#/admin"),
    ("pattern", with_(GOOD, order_id="abc"), "#/order_id"),
    ("format email", with_(GOOD, customer={"email": "not-an-email"}), "#/customer/email"),
    ("enum", with_(GOOD, customer={"email": "a@b.co", "tier": "gold"}), "#/customer/tier"),
    ("pointer escaping (RFC 6901)", with_(GOOD, **{"a/b~c": "x"}), "#/a~1b~0c"),
    ("not an object", [1, 2], "#"),
]


@pytest.mark.parametrize("doc,pointer", [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_schema(doc, pointer):
    reply = run(SCHEMA, orjson.dumps(doc))
    if pointer is None:
        assert reply is None
        return
    assert reply.status == 400
    p = problem_of(reply)
    assert p["request_id"] == "rid-v"
    assert p["errors"][0]["pointer"] == pointer
    assert pointer in p["detail"]


def test_all_errors_listed_up_to_max_errors():
    doc = with_(GOOD, items=[{"sku": "X", "qty": 0} for _ in range(20)])
    p = problem_of(run(SCHEMA, orjson.dumps(doc)))
    assert len(p["errors"]) == 10
    p = problem_of(run(Validation(ValidateConfig(schema=ORDER_SCHEMA, max_errors=1)), orjson.dumps(doc)))
    assert len(p["errors"]) == 1


BAD_JSON = [
    ("truncated", b'{"order_id": '),
    ("trailing garbage", b'{} x'),
    ("NaN is not JSON", b'{"a": NaN}'),
    ("not UTF-8", b'{"a": "\xff"}'),
    ("lone surrogate", b'{"a": "\\ud800"}'),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000),
    ("empty body", b""),
]


@pytest.mark.parametrize("body", [c[1] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_invalid_json_is_400_with_root_pointer(body):
    ctx = ctx_for(headers=[(b"content-type", b"application/json")], body=body or b"x")
    assert SCHEMA.request_filter(ctx) is None
    reply = SCHEMA.request_body_filter(ctx, body)
    assert reply.status == 400
    assert problem_of(reply)["errors"][0]["pointer"] == "#"


def test_long_values_are_not_echoed_whole():
    doc = with_(GOOD, order_id="A" * 100_000)
    reply = run(SCHEMA, orjson.dumps(doc))
    assert len(reply.body) < 2000
    assert problem_of(reply)["errors"][0]["pointer"] == "#/order_id"


def test_one_megabyte_body_within_the_limit():
    items = [{"sku": f"sku-{i:06d}", "qty": i % 1000 + 1, "note": "handle with care " * 4} for i in range(9_500)]
    body = orjson.dumps(with_(GOOD, items=items))
    assert 1_000_000 < len(body) <= 1024 * 1024  # within the default max_body_size (1m)
    t0 = time.perf_counter()
    assert run(SCHEMA, body) is None
    elapsed = time.perf_counter() - t0
    items[9_321]["qty"] = 5000
    reply = run(SCHEMA, orjson.dumps(with_(GOOD, items=items)))
    assert problem_of(reply)["errors"][0]["pointer"] == "#/items/9321/qty"
    print(f"1 MB body decoded and validated in {elapsed * 1e3:.1f} ms")  # informative, not asserted


def test_catastrophic_pattern_is_bounded():
    # (a|a?)+ with a lookahead forces the backtracking engine: without a budget this takes
    # seconds on 40 characters; with it, the match fails fast and the request is refused.
    mw = Validation(ValidateConfig(schema={"properties": {"s": {"type": "string", "pattern": "^(a|a?)+(?=b)$"}}}))
    t0 = time.perf_counter()
    reply = run(mw, orjson.dumps({"s": "a" * 40 + "c"}))
    assert time.perf_counter() - t0 < 5  # generous: the point is that it returns at all
    assert reply.status == 400 and problem_of(reply)["errors"][0]["pointer"] == "#/s"


# --------------------------------------------------------------------------- head checks

HEADS = Validation(ValidateConfig(content_types=["application/json", "text/*"], required_headers=["X-Tenant-ID"],
                                  required_query=["page", "a b"]))

HEAD_CASES = [
    # (id, method, headers, query, body, status or None, errors[0] subset)
    ("all present", "POST", [(b"X-Tenant-ID", b"t1"), (b"Content-Type", b"application/json")], b"page=1&a+b=2",
     b"{}", None, None),
    ("missing header", "GET", [], b"page=1&a%20b=2", b"", 400, {"header": "X-Tenant-ID"}),
    ("empty header counts as missing", "GET", [(b"x-tenant-id", b"  ")], b"page=1&a%20b=2", b"", 400,
     {"header": "X-Tenant-ID"}),
    ("missing query parameter", "GET", [(b"x-tenant-id", b"t")], b"a%20b=2", b"", 400, {"parameter": "page"}),
    ("empty query value counts as missing", "GET", [(b"x-tenant-id", b"t")], b"page=&a+b=1", b"", 400,
     {"parameter": "page"}),
    ("percent-encoded name", "GET", [(b"x-tenant-id", b"t")], b"%70age=1&a%20b=2", b"", None, None),
    ("type wildcard", "POST", [(b"x-tenant-id", b"t"), (b"content-type", b"text/csv; charset=utf-8")],
     b"page=1&a+b=2", b"a,b", None, None),
    ("content type refused", "POST", [(b"x-tenant-id", b"t"), (b"content-type", b"application/xml")],
     b"page=1&a+b=2", b"<a/>", 415, {"header": "Content-Type"}),
    ("content type missing with a body", "POST", [(b"x-tenant-id", b"t")], b"page=1&a+b=2", b"{}", 415,
     {"header": "Content-Type"}),
    ("no body: no content type needed", "GET", [(b"x-tenant-id", b"t")], b"page=1&a+b=2", b"", None, None),
]


@pytest.mark.parametrize("method,headers,query,body,status,err", [c[1:] for c in HEAD_CASES],
                         ids=[c[0] for c in HEAD_CASES])
def test_head_checks(method, headers, query, body, status, err):
    ctx = ctx_for(method, headers, body, query)
    reply = HEADS.request_filter(ctx)
    if status is None:
        assert reply is None
        return
    assert reply.status == status
    p = problem_of(reply)
    assert p["status"] == status
    assert err.items() <= p["errors"][0].items()


def test_schema_means_json_when_no_content_types():
    for ct, ok in [(b"application/json", True), (b"application/merge-patch+json", True),
                   (b"Application/JSON; charset=utf-8", True), (b"text/plain", False),
                   (b"application/x-www-form-urlencoded", False), (b"+json", False)]:
        reply = SCHEMA.request_filter(ctx_for(headers=[(b"content-type", ct)], body=b"{}"))
        assert (reply is None) is ok, ct
        if not ok:
            assert reply.status == 415


def test_schema_skipped_for_other_allowed_types():
    mw = Validation(ValidateConfig(content_types=["application/json", "multipart/form-data"], schema=ORDER_SCHEMA))
    ctx = ctx_for(headers=[(b"content-type", b"multipart/form-data; boundary=x")], body=b"--x--")
    assert mw.request_filter(ctx) is None
    assert mw.request_body_filter(ctx, b"--x--") is None


def test_unknown_encoding_refused_under_a_schema():
    reply = SCHEMA.request_filter(ctx_for(headers=[(b"content-type", b"application/json"),
                                                   (b"content-encoding", b"deflate")], body=b"\x78\x9c"))
    assert reply.status == 415 and reply.get(b"accept-encoding") == b"gzip, br, zstd"


def test_body_required():
    mw = Validation(ValidateConfig(body_required=True))
    reply = mw.request_filter(ctx_for("POST", [], b""))
    assert reply.status == 400 and problem_of(reply)["errors"][0]["pointer"] == "#"
    assert mw.request_filter(ctx_for("POST", [], b"x")) is None
    assert mw.request_filter(ctx_for("POST", [], b"", chunked=True)) is None


def test_chunked_body_is_validated():
    ctx = ctx_for(headers=[(b"content-type", b"application/json")], chunked=True)
    assert SCHEMA.request_filter(ctx) is None
    assert SCHEMA.request_body_filter(ctx, orjson.dumps(GOOD)) is None
    assert SCHEMA.request_body_filter(ctx, b'{"order_id": 1}').status == 400


# --------------------------------------------------------------------------- contract and config

def test_needs_body_only_with_a_schema():
    assert SCHEMA.needs_body() is True
    assert HEADS.needs_body() is False  # head checks only: the engine keeps streaming
    assert val_mod.Validation.request_body_filter is not Middleware.request_body_filter


def test_build():
    route = type("Route", (), {"validate": None})()
    assert val_mod.build(None, None, route, None) is None
    assert val_mod.build(None, None, None, None) is None  # no validation in the global chain
    route.validate = ValidateConfig(required_headers=["X-A"])
    assert isinstance(val_mod.build(None, None, route, None), Validation)
    route.validate = ValidateConfig()
    assert val_mod.build(None, None, route, None) is None


@pytest.mark.parametrize("block,where,words", [
    ("{schema: {type: strin}}", "validate.schema", "invalid JSON Schema at /type"),
    ("{schema: {$ref: 'https://example.com/s.json'}}", "validate.schema", "never fetched"),
    ("{schema: {properties: {a: {pattern: '(?<'}}}}", "validate.schema", "/properties/a/pattern"),
    ("{content_types: [json]}", "validate.content_types[0]", "media type"),
    ("{max_errors: 0}", "validate.max_errors", ""),
    ("{required_headers: ['bad header']}", "validate.required_headers[0]", ""),
])
def test_bad_config_named_at_load(block, where, words):
    from fastgw.config.errors import ConfigError
    from fastgw.config.loader import load_config_text

    text = f"""
services:
  s:
    url: http://127.0.0.1:9
    routes:
      - path: /a
        methods: [POST]
        validate: {block}
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(text)
    msg = str(ei.value)
    assert f"services.s.routes[0].{where}" in msg and words in msg
