"""How `serve` runs uvicorn: httptools with a bound on the request head (431 past it).

httptools gathers a header value that arrives in pieces by concatenating bytes
(`self._current_header_value += val` in its parser.pyx), so each piece copies everything
received so far: one 64 MiB header cost ~5 s of event-loop time, stalling every other
request (uvicorn's own `self.url += url` does the same for the request line). uvicorn
bounds the head only for h11 (`h11_max_incomplete_event_size`). This protocol counts the
head's bytes before the parser sees them and answers 431 and closes the connection as
soon as they pass the limit (dropping, unparsed, what the client still sends), so the
parser never holds more than that. Its limit travels
in uvicorn's own `h11_max_incomplete_event_size` option, so it reaches worker processes
with the rest of uvicorn's config.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.config import Server

_END = b"\r\n\r\n"
REFUSED = -2
LINGER_S = 1.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def too_large_response(limit: int) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": f"The request's headers exceed the gateway's limit of {limit} bytes.",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_header_fields_too_large",
            }
        }
    )
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over the limit with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self._head = 0  # bytes of the current head so far; -1 once complete, REFUSED after 431
        self._tail = b""  # the last bytes seen, for an end marker split across reads

    def data_received(self, data: bytes) -> None:
        if self._head >= 0:
            joined = self._tail + data[:3]
            if (end := joined.find(_END)) >= 0:
                self._head += end + 4 - len(self._tail)
            elif (end := data.find(_END)) >= 0:
                self._head += end + 4
            else:
                self._head += len(data)
                self._tail = (self._tail + data[-3:])[-3:]
            if self._head > self._head_limit:
                self._refuse()
                return
        elif self._head == REFUSED:
            return  # the rest of a refused head: dropped unparsed
        super().data_received(data)

    def _refuse(self) -> None:
        """431, then a lingering close: what the client still sends is read and dropped for
        a moment, so its kernel does not reset the connection before it reads the 431."""
        self._head = REFUSED
        self.transport.write(too_large_response(self._head_limit))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def on_headers_complete(self) -> None:
        self._head, self._tail = -1, b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._head != REFUSED:
            self._head, self._tail = 0, b""  # what follows on this connection is a new head


PROTOCOL = f"{BoundedHttpToolsProtocol.__module__}:{BoundedHttpToolsProtocol.__qualname__}"


def uvicorn_options(server: Server) -> dict[str, Any]:
    """The uvicorn options `serve` uses for this config's `server` section."""
    return {"http": PROTOCOL, "h11_max_incomplete_event_size": server.max_header_bytes}
