"""A loopback OTLP/HTTP trace receiver for benchmarks: accepts and counts, stores nothing.

`POST /v1/traces` -> 200 with an empty ExportTraceServiceResponse; the protobuf body is
decoded only to count spans. `GET /stats` -> {"requests", "bytes", "spans"}.

    python -m tests.bench.otlp_sink [--port 0]
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from tests.bench.common import prepare, read_body, run_asgi, send_bytes, server_args


def count_spans(body: bytes) -> int:
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        return -1
    request = ExportTraceServiceRequest.FromString(body)
    return sum(
        len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
    )


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
                try:
                    if (b"content-encoding", b"gzip") in scope["headers"]:
                        body = gzip.decompress(body)
                    self.spans += max(count_spans(body), 0)
                except Exception:  # a body we cannot decode still counts as received
                    pass
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
