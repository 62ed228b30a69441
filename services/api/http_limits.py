"""Bounded requests: the HTTP server refuses what would tie up a connection or memory for free.

uvicorn caps none of these on its own (httptools buffers a header of any size; nothing closes a
connection that sends a byte a second), so `diffii serve` (and `diffii up`, Docker, Kubernetes, which
all run it) uses these subclasses of uvicorn's protocols. Before the parser sees a byte, the request
head is counted here:

- the request line over `max_request_line_bytes`: 414, and the connection closed;
- the head (request line and headers) over `max_header_bytes`, or more than `max_headers` header
  lines: 431, closed;
- a head not complete `header_timeout` seconds after the connection opened (or after the previous
  response on a kept-alive connection): 408, closed. A slowloris sending a byte a second, or a
  connection that sends nothing, is gone after that time;
- a body that, while the application waits for it, brings fewer than `min_body_rate` bytes a second
  over a window of `body_timeout` seconds: 408 (or closed, if the response has started).

Every refusal costs the server a few bytes of state; other connections are served meanwhile.
Settings: services/api/settings.py (DIFFII_MAX_REQUEST_LINE_BYTES and the others), docs/operations.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from services.api.settings import ApiSettings

log = logging.getLogger("services.api.http_limits")

_HEAD_END = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class HttpLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    min_body_rate: int


def limits_from(settings: ApiSettings) -> HttpLimits:
    """The settings of the same names."""
    return HttpLimits(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(HttpLimits)})


def uvicorn_options(settings: ApiSettings) -> dict[str, Any]:
    """What `diffii serve` passes uvicorn: the bounded protocol and its idle timeout."""
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": settings.keep_alive_timeout,
        # h11's own cap on an incomplete head, never below ours (ours answers 431 first).
        "h11_max_incomplete_event_size": settings.max_header_bytes + 1024,
    }


_configured: HttpLimits | None = None


def configure(limits: HttpLimits) -> None:
    """The limits of this process's connections (`diffii serve` sets them from its settings)."""
    global _configured
    _configured = limits


def current() -> HttpLimits:
    """The configured limits, else those of the DIFFII_* environment (uvicorn worker processes)."""
    global _configured
    if _configured is None:
        from services.api.settings import ApiSettings

        _configured = limits_from(ApiSettings())
    return _configured


_STATUS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class _Bounded:
    """Mixin over a uvicorn HTTP protocol (h11 or httptools): counts the head before the parser does,
    and times the head and the body. Reads the protocol's `transport`, `loop`, `cycle`, `flow`."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._limits = current()
        self._timer: asyncio.TimerHandle | None = None
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._reading == "head":
            refusal = self._scan_head(data)
            if refusal is not None:
                self._refuse(*refusal)
                return
        elif self._reading == "body":
            self._window_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing():
            self._cancel_timer()
        elif self.cycle is not None and not self.cycle.response_complete:
            self._start_body(0)  # a pipelined request, already parsed
        else:
            self._start_head()

    # -- the head ------------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._reading = "head"
        self._head_bytes = 0
        self._head_lines = 0
        self._line_done = False
        self._tail = b""
        self._arm(self._limits.header_timeout, self._head_timed_out)

    def _scan_head(self, data: bytes) -> tuple[int, str] | None:
        limits = self._limits
        seen = self._tail + data
        end = _HEAD_END.search(seen)
        stop = max(end.end() - len(self._tail), 0) if end else len(data)
        counted = data[:stop] if end else data
        if not self._line_done:
            newline = counted.find(b"\n")
            line = self._head_bytes + (len(counted) if newline < 0 else newline)
            if line > limits.max_request_line_bytes:
                return (
                    414,
                    f"request line over {limits.max_request_line_bytes:,} bytes (max_request_line_bytes)",
                )
            self._line_done = newline >= 0
        self._head_bytes += len(counted)
        self._head_lines += counted.count(b"\n")
        if self._head_bytes > limits.max_header_bytes:
            return 431, f"request head over {limits.max_header_bytes:,} bytes (max_header_bytes)"
        headers = self._head_lines - 1 - (1 if end else 0)
        if headers > limits.max_headers:
            return 431, f"more than {limits.max_headers:,} header lines (max_headers)"
        if end:
            self._start_body(len(data) - stop)
        else:
            self._tail = seen[-2:]
        return None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._reading == "head" and not self.transport.is_closing():
            self._refuse(
                408, f"request head not complete within {self._limits.header_timeout:g}s (header_timeout)"
            )

    # -- the body ------------------------------------------------------------------------------------

    def _start_body(self, received: int) -> None:
        self._reading = "body"
        self._window_bytes = received
        self._arm(self._limits.body_timeout, self._body_window_ended)

    def _body_window_ended(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self._reading != "body" or self.transport.is_closing():
            return
        if cycle is None or cycle.response_complete or not cycle.more_body:
            return  # the body is read: from here on it is the application's time, not the client's
        needed = self._limits.min_body_rate * self._limits.body_timeout
        if self.flow.read_paused or self._window_bytes >= needed:
            self._start_body(0)  # the application is behind, or the client keeps the pace
            return
        detail = (
            f"request body slower than {self._limits.min_body_rate:,} bytes/s over "
            f"{self._limits.body_timeout:g}s (min_body_rate, body_timeout)"
        )
        self._refuse(408, detail, answer=not cycle.response_started)

    # -- helpers -------------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _refuse(self, status: int, detail: str, *, answer: bool = True) -> None:
        """Answer `status` (unless a response has begun) and close the connection."""
        self._reading = "closed"
        self._cancel_timer()
        peer = self.transport.get_extra_info("peername")
        log.warning("refused a request from %s: %s %s", peer[0] if peer else "?", status, detail)
        if answer:
            body = (detail + "\n").encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _STATUS[status], len(body), body)
            )
        self.transport.close()


class BoundedH11Protocol(_Bounded, H11Protocol):
    """uvicorn's h11 protocol under the limits."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is the fallback
    BoundedProtocol: type[asyncio.Protocol] = BoundedH11Protocol
else:

    class BoundedHttpToolsProtocol(_Bounded, HttpToolsProtocol):
        """uvicorn's httptools protocol (the C parser) under the limits."""

    BoundedProtocol = BoundedHttpToolsProtocol

# What `diffii serve` hands uvicorn (an import string also works in its worker processes).
PROTOCOL = "services.api.http_limits:BoundedProtocol"
