"""A loopback OTLP/HTTP trace receiver for benchmarks: accepts and counts, stores nothing.

`POST /v1/traces` -> 200 with an empty ExportTraceServiceResponse. Bodies are kept and
decoded (to count spans) only when `GET /stats` asks -> {"requests", "bytes", "spans"}, so
the sink costs next to no CPU while a benchmark measures the gateway beside it.

    python -m tests.bench.otlp_sink [--port 0]
"""

from __future__ import annotations

import contextlib
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
        self.bodies: list[tuple[bool, bytes]] = []  # (gzipped, body) not counted yet

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            body = await read_body(receive)
            self.requests += 1
            self.bytes += len(body)
            if scope["path"] == "/v1/traces":
                self.bodies.append(((b"content-encoding", b"gzip") in scope["headers"], body))
            await send_bytes(send, b"", content_type=b"application/x-protobuf")
        else:
            self._count()
            stats = {"requests": self.requests, "bytes": self.bytes, "spans": self.spans}
            await send_bytes(send, orjson.dumps(stats))

    def _count(self) -> None:
        bodies, self.bodies = self.bodies, []
        for gzipped, body in bodies:
            with contextlib.suppress(Exception):  # an undecodable body still counts as received
                self.spans += max(count_spans(gzip.decompress(body) if gzipped else body), 0)


def main() -> None:
    args = server_args(__doc__.splitlines()[0]).parse_args()
    sock = prepare(args)
    run_asgi(Sink(), sock)


if __name__ == "__main__":
    main()
