"""Path normalisation and request-target splitting (fastgw.http.normalize), from tables."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw.errors import GatewayError
from fastgw.http.normalize import normalize_path, split_target

# raw path -> (normalised, has_encoded_slash)
VALID = [
    # clean paths: returned untouched (fast path)
    (b"/", "/", False),
    (b"/a", "/a", False),
    (b"/api/v1/svg/files/abc-123/render", "/api/v1/svg/files/abc-123/render", False),
    (b"/a/b/", "/a/b/", False),
    (b"/file.tar.gz", "/file.tar.gz", False),
    (b"/a../b.", "/a../b.", False),
    (b"/~user/x_y", "/~user/x_y", False),
    # duplicate slashes merged
    (b"//", "/", False),
    (b"//a", "/a", False),
    (b"/a//b", "/a/b", False),
    (b"/a///b//", "/a/b/", False),
    # dot segments (RFC 3986 5.2.4)
    (b"/.", "/", False),
    (b"/./", "/", False),
    (b"/a/./b", "/a/b", False),
    (b"/a/.", "/a/", False),
    (b"/a/b/..", "/a/", False),
    (b"/a/b/../", "/a/", False),
    (b"/a/..", "/", False),
    (b"/a/../b", "/b", False),
    (b"/a/b/../../c", "/c", False),
    (b"/a//../b", "/b", False),  # slashes merged first, as nginx does
    (b"/.well-known/acme", "/.well-known/acme", False),
    (b"/...", "/...", False),
    (b"/..a/b", "/..a/b", False),
    # unreserved escapes decoded, others kept with upper-case hex
    (b"/%61dmin", "/admin", False),
    (b"/%41%5a%30%39%2D%2e%5F%7e", "/AZ09-._~", False),
    (b"/%2e", "/", False),
    (b"/a/%2e%2E/b", "/b", False),
    (b"/a/.%2e/b", "/b", False),
    (b"/a%20b", "/a%20b", False),
    (b"/a%3a%40%c3%a9", "/a%3A%40%C3%A9", False),
    (b"/%252e%252e/x", "/%252e%252e/x", False),  # decoded once only
    (b"/%25", "/%25", False),
    # encoded slash kept, flagged
    (b"/a%2fb", "/a%2Fb", True),
    (b"/a%2Fb/../c", "/c", False),  # the %2F segment is gone
    (b"/a/..%2F", "/a/..%2F", True),
    # other printable ASCII passes as sent
    (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", False),
    (b"/{x}|^`\"<>", "/{x}|^`\"<>", False),
]


@pytest.mark.parametrize("raw, want, enc", VALID)
def test_normalize_valid(raw, want, enc):
    assert normalize_path(raw) == (want, enc)
    # idempotent
    assert normalize_path(want.encode()) == (want, enc)


INVALID = [
    b"",
    b"a/b",
    b"*",
    b"http://h/x",
    # above the root (400, like nginx; not clamped)
    b"/..",
    b"/../a",
    b"/a/../..",
    b"/a/../../b",
    b"//..",
    b"/%2e%2e",
    b"/.%2E/x",
    # invalid escapes
    b"/%",
    b"/%2",
    b"/%zz",
    b"/%g0",
    b"/a%2",
    b"/%%41",
    # backslash, ';', NUL, controls, DEL, non-ASCII, space, '#'
    b"/a\\b",
    b"/a%5cb",
    b"/a%5Cb",
    b"/a;b",
    b"/admin;jsessionid=1/x",
    b"/a%3bb",
    b"/a%3Bb",
    b"/a\x00b",
    b"/a%00b",
    b"/a%0ab",
    b"/a%0D%0Ab",
    b"/a%7fb",
    b"/a\tb",
    b"/a\x1fb",
    b"/a\x7fb",
    b"/caf\xc3\xa9",
    b"/a\x80",
    b"/a b",
    b"/a#frag",
]


@pytest.mark.parametrize("raw", INVALID)
def test_normalize_invalid(raw):
    with pytest.raises(GatewayError) as ei:
        normalize_path(raw)
    assert ei.value.kind == "bad_path" and ei.value.status == 400
    assert raw.decode("latin-1") not in ei.value.detail or not raw  # nothing reflected


TARGETS = [
    (b"/", (b"/", b"", None)),
    (b"/a/b?x=1&y=2", (b"/a/b", b"x=1&y=2", None)),
    (b"/a?", (b"/a", b"", None)),
    (b"/a?b?c", (b"/a", b"b?c", None)),
    (b"/a%3Fb?c", (b"/a%3Fb", b"c", None)),
    (b"http://example.com/a?b", (b"/a", b"b", b"example.com")),
    (b"HTTP://Example.com:8080/a", (b"/a", b"", b"Example.com:8080")),
    (b"https://example.com", (b"/", b"", b"example.com")),
    (b"http://example.com?q=1", (b"/", b"q=1", b"example.com")),
    (b"http://[::1]:80/x", (b"/x", b"", b"[::1]:80")),
    (b"http://10.0.0.1//x", (b"//x", b"", b"10.0.0.1")),  # normalised later
]


@pytest.mark.parametrize("target, want", TARGETS)
def test_split_target(target, want):
    assert split_target(target) == want


@pytest.mark.parametrize(
    "target",
    [
        b"*",                       # OPTIONS * : not supported (nginx answers 400 too)
        b"example.com:443",         # authority-form (CONNECT)
        b"",
        b"ftp://example.com/x",
        b"http://",
        b"http:///x",
        b"http://user:pw@example.com/x",
        b"http://exa mple.com/x",
        b"http://example.com#frag",
        b"a/b",
    ],
)
def test_split_target_invalid(target):
    with pytest.raises(GatewayError) as ei:
        split_target(target)
    assert ei.value.kind == "bad_path"


# --- properties -------------------------------------------------------------------------

# An alphabet that reaches every rule: dots, slashes, escapes (valid, invalid, encoded
# dots/slashes/letters), forbidden bytes and plain letters.
_PIECES = [
    "/", "//", ".", "..", "/./", "/../", "a", "d", "m", "i", "n", "admin", "x", "-", "~",
    "%", "%2", "%2e", "%2E", "%2f", "%2F", "%61", "%41", "%7e", "%25", "%3a", "%c3%a9",
    "%00", "%5c", "%3b", ";", "\\", "\x00", "\t", "\x7f", "\xe9", "#", ":", "@", "{", "*",
]
raw_paths = st.lists(st.sampled_from(_PIECES), max_size=12).map(
    lambda xs: ("/" + "".join(xs)).encode("latin-1")
)

_ESCAPE = re.compile(r"%(..)")
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@settings(max_examples=2000, deadline=None)
@given(raw_paths)
@example(b"/a/%2e%2e/%2e%2e")
@example(b"/%2e/../admin")
def test_normalize_idempotent_and_canonical(raw):
    try:
        path, enc = normalize_path(raw)
    except GatewayError as e:
        assert e.kind == "bad_path"
        return
    assert normalize_path(path.encode("ascii")) == (path, enc)
    assert path.startswith("/") and "//" not in path
    segs = path.split("/")[1:]
    assert "." not in segs and ".." not in segs
    assert enc == ("%2F" in path)
    for hx in _ESCAPE.findall(path):
        assert hx == hx.upper()
        assert chr(int(hx, 16)) not in _UNRESERVED
        assert int(hx, 16) >= 0x20 and hx not in ("5C", "3B", "7F")
    assert not set(path) & set("\\;#\x00 ")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_normalize_any_bytes_never_crashes(data):
    raw = b"/" + data
    try:
        path, _enc = normalize_path(raw)
    except GatewayError as e:
        assert e.kind == "bad_path"
    else:
        assert path.isascii()
        assert normalize_path(path.encode())[0] == path
