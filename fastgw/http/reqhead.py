"""Request header names the downstream protocol interprets (L2), and what it checks.

``special_kind(lower_name)`` classifies a request header while it is parsed (one dict
lookup per header line); a name it does not know is forwarded as is.  Kinds from
``H_RID`` on are forwarded *and* captured into the Request (``http.request``), so that no middleware needs a
header lookup for them (request id, access log, auth, CORS).
"""

from __future__ import annotations

import re

(H_HOST, H_CONN, H_CL, H_TE, H_HOP, H_UPGRADE, H_EXPECT, H_XFF, H_XFWD, H_XFP, H_XFH,
 H_RID, H_UA, H_AUTHZ, H_ORIGIN) = range(1, 16)
H_TRACE = 16  # traceparent/tracestate: forwarded, and flagged in Request.trace_hdrs

SPECIAL = {
    b"host": H_HOST,
    b"connection": H_CONN,
    b"content-length": H_CL,
    b"transfer-encoding": H_TE,
    b"keep-alive": H_HOP,
    b"proxy-connection": H_HOP,
    b"te": H_HOP,
    b"trailer": H_HOP,
    b"proxy-authorization": H_HOP,
    b"upgrade": H_UPGRADE,
    b"expect": H_EXPECT,
    b"x-forwarded-for": H_XFF,
    b"x-forwarded-proto": H_XFP,
    b"x-forwarded-host": H_XFH,  # dropped; kept in Request.xfh (gateway.trust_forwarded_host)
    b"x-forwarded-port": H_XFWD,
    b"forwarded": H_XFWD,
    b"x-real-ip": H_XFWD,
    # forwarded, and captured (kinds >= H_RID)
    b"x-request-id": H_RID,
    b"user-agent": H_UA,
    b"authorization": H_AUTHZ,
    b"origin": H_ORIGIN,
    b"traceparent": H_TRACE,  # (only flagged: the tracing middleware looks them up)
    b"tracestate": H_TRACE,
}
special_kind = SPECIAL.get  # bound once: called for every header line

# Request.authorization when the request carried Authorization more than once (a token is ambiguous)
REPEATED = b"\0repeated"

# the usual methods as interned str (no decode per request)
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

# RFC 9112 3.2 / RFC 3986 3.2.2: host [":" port]; no userinfo, path, spaces.
valid_host = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{0,5})?").fullmatch
