"""What the client protocol does when the parser refuses its input (L3 helper of
``fastgw.http.protocol``): an Upgrade head (httptools stops there), a header callback's
``GatewayError`` (too large, a bad Host, ...), or malformed bytes.

``ParseFailures`` is a mixin of ``DownstreamProtocol`` (it uses that class's state and
rules, see its module header: rule 2, nothing of a malformed request is forwarded; rule
6, the close lingers over the unread input).  These paths are cold: the usual read never
enters them.
"""

from __future__ import annotations

import httptools

from fastgw.errors import GatewayError
from fastgw.http.conninfo import PAUSE_BACKLOG

# what ``feed_data`` raises for the input (``_feed_failed``); HttpParserUpgrade is not an
# HttpParserError
PARSER_RAISES = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class ParseFailures:
    __slots__ = ()

    def _feed_failed(self, e, data) -> None:
        """``feed_data(data)`` raised ``e`` (``_PARSER_RAISES``): an Upgrade head, a
        callback's GatewayError, or malformed input."""
        self.fresh = False   # (the parser's state is its own now: no read skips it)
        if isinstance(e, httptools.HttpParserUpgrade):
            off = e.args[0] if e.args else len(data)
            self._on_upgrade_request(data[off:])
        elif isinstance(e, httptools.HttpParserCallbackError):
            cause = e.__context__
            if isinstance(cause, GatewayError):
                self._parse_failed(cause.kind, cause.detail)
            else:
                raise e
        elif isinstance(e, httptools.HttpParserInvalidURLError):
            self._parse_failed("bad_request", f"invalid request target: {e}")
        else:
            self._parse_failed("bad_framing", f"malformed request: {e}")

    def _parse_failed(self, kind: str, detail: str) -> None:
        """The parser refused the input.  Requests are only dispatched once the bytes that
        carried them parsed cleanly, so nothing of a malformed request was forwarded."""
        if self.closed:
            return
        self._pause(PAUSE_BACKLOG)
        self.unread = True
        if self.cur is not None and not self.cur_complete and not self.queue:
            # The body of the request in flight is malformed (bad chunk): the upstream
            # exchange cannot finish cleanly.  Abort both sides.
            self.handler.abort_current(self, kind)
            self._abort()
            return
        # Drop the request the error belongs to (the last one parsed, if incomplete).
        if self.queue and not self.queue[-1].qcomplete:
            self.queue.pop()
        self.p_error = (kind, detail)
        if self.cur is None:
            if self.queue:
                self._next()
            else:
                self._emit_parse_error()

    def _emit_parse_error(self) -> None:
        kind, detail = self.p_error
        self.p_error = None
        self.backlog = None
        self.handler.parse_error(self, kind, detail)

    def _on_upgrade_request(self, rest: bytes) -> None:
        # httptools stops at the end of the head of an Upgrade request: that request is
        # complete (its body, if any, is not parsed) and the connection ends with it
        # unless the upstream switches protocols (WebSocket tunnel).  Bytes the client
        # sent behind the head are kept for the tunnel.
        req = self.p_req
        if rest:
            self.backlog = bytearray(rest)
        if req is not None and req is not self.cur:
            req.qcomplete = True
        self.p_error = ("bad_request", "no further requests after an Upgrade request")
        if self.cur is None and self.queue:
            self._next()
