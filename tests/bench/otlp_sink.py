"""A loopback OTLP/HTTP trace receiver for benchmarks: accepts and counts, stores nothing.

`POST /v1/traces` -> 200 with an empty ExportTraceServiceResponse; spans are counted by
walking the protobuf wire format (no decoding, no storing), so the sink costs next to no
CPU or memory while a benchmark measures the gateway beside it.
`GET /stats` -> {"requests", "bytes", "spans"}.

    python -m tests.bench.otlp_sink [--port 0]
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from typing import Any

import orjson

from tests.bench.common import prepare, read_body, run_asgi, send_bytes, server_args


def count_spans(body: bytes) -> int:
    """Spans in an ExportTraceServiceRequest: resource_spans (1) > scope_spans (2) > spans (2)."""
    view = memoryview(body)
    return sum(
        sum(1 for _ in _fields(scope, 2)) for rs in _fields(view, 1) for scope in _fields(rs, 2)
    )


def _fields(buf: memoryview, wanted: int) -> Iterator[memoryview]:
    """The payloads of length-delimited field `wanted` of a message; others are skipped."""
    at, end = 0, len(buf)
    while at < end:
        key, at = _varint(buf, at)
        wire = key & 7
        if wire == 2:
            size, at = _varint(buf, at)
            if key >> 3 == wanted:
                yield buf[at : at + size]
            at += size
        elif wire == 0:
            at = _varint(buf, at)[1]
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def _varint(buf: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


class Sink:
    def __init__(self) -> None:
        self.requests = self.bytes = self.spans = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            body = await read_body(receive)
            self.requests += 1
            self.bytes += len(body)
            if scope["path"] == "/v1/traces":
                if (b"content-encoding", b"gzip") in scope["headers"]:
                    body = gzip.decompress(body)
                with contextlib.suppress(ValueError, IndexError):  # undecodable: received
                    self.spans += count_spans(body)
            await send_bytes(send, b"", content_type=b"application/x-protobuf")
        else:
            stats = {"requests": self.requests, "bytes": self.bytes, "spans": self.spans}
            await send_bytes(send, orjson.dumps(stats))


def main() -> None:
    args = server_args(__doc__.splitlines()[0]).parse_args()
    sock = prepare(args)
    run_asgi(Sink(), sock)


if __name__ == "__main__":
    main()
