"""uvicorn's httptools protocol with the connection limits a production deployment sets in front of it.

uvicorn 0.54 has none of these for httptools (h11_max_incomplete_event_size is h11's only), measured: a 200 MB
URL was buffered whole (+350 MB, /health stalled ~10 s), and a half-sent request never timed out, so ~1,100
idle half-requests used up a 1,024-descriptor limit and /health failed. Here:
- the request line and headers together are at most `max_head_bytes` (else 431 and the connection closes);
- a request must arrive whole within `request_timeout_s` of its first byte, and a new connection must send
  one within that time (else 408 while the head is incomplete; a slow body just closes, its handler sees the
  hang-up);
- at most `max_connections` connections are open: one more closes the connection that has waited longest
  without a request being handled (an idle keep-alive or a half-sent request), never one whose request is
  being answered; when every one is busy, the new one gets 503 with Retry-After.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass
from http import HTTPStatus

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from components.serve.limits import MAX_HEAD_BYTES, REQUEST_TIMEOUT_S

# Descriptors kept free for everything else the server opens (model files, GCS downloads, pipes, logs).
RESERVED_DESCRIPTORS = 64


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = MAX_HEAD_BYTES
    request_timeout_s: float = REQUEST_TIMEOUT_S
    max_connections: int = 0  # 0: what the descriptor limit allows (see connection_limit)


def connection_limit() -> int:
    """Raises this process's soft descriptor limit to its hard one (as servers do; the usual soft default of
    1,024 is what a slow-request flood exhausted) and returns how many connections fit under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(8, soft - RESERVED_DESCRIPTORS)


class HeadTooLarge(Exception):
    pass


def _refusal(status: HTTPStatus, message: str, retry_after: bool = False) -> bytes:
    body = json.dumps({"error": message}).encode()
    retry = b"retry-after: 1\r\n" if retry_after else b""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
            % (status, status.phrase.encode(), len(body), retry)) + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.waiting_since = 0.0  # loop time this connection began waiting for a request (oldest goes first)
        self._head_bytes = 0
        self._head_complete = False
        self._timer = None

    # --- the request timeout: armed when a connection opens or a request begins, disarmed when it is whole

    def _arm(self) -> None:
        self._disarm()
        self.waiting_since = self.loop.time()
        self._timer = self.loop.call_later(self.limits.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._head_complete:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                         f"the request did not arrive within {self.limits.request_timeout_s:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: HTTPStatus, message: str, retry_after: bool = False) -> None:
        self.transport.write(_refusal(status, message, retry_after))
        self.transport.close()

    def busy(self) -> bool:
        """Whether a request of this connection is being handled (its head is in, its answer not yet sent)."""
        return self._head_complete and self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.limits.max_connections:
            idle = [c for c in self.connections
                    if c is not self and isinstance(c, LimitedHttpToolsProtocol) and not c.busy()]
            if idle:
                min(idle, key=lambda c: c.waiting_since).transport.close()
            else:
                self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections: retry later", retry_after=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.waiting_since = self.loop.time()  # idle again: first in line to be closed when connections run out

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with 431 for a head over the limit; an Upgrade (WebSocket) request is served as plain HTTP.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, HeadTooLarge) or isinstance(e.__cause__, HeadTooLarge):
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                             f"the request line and headers are over {self.limits.max_head_bytes} bytes")
            else:
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self.cycle is not None:  # served as plain HTTP; the parser reads nothing more on this connection
                self.cycle.keep_alive = False

    # --- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_complete = False
        self._arm()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_head_bytes:
            raise HeadTooLarge()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_complete = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
