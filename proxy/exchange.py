"""One request's exchange: what it did, for headers, metrics, spans and the audit log."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Route, Tenant
from proxy.endpoints import Target
from proxy.guard.engine import Outcome, SideResult
from proxy.stream_watch import StreamWatch


@dataclass(slots=True)
class Exchange:
    """What one request did, gathered for the response headers, metrics and the audit log."""

    request_id: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    at: float = field(default_factory=time.time)
    tenant: Tenant | None = None
    route: Route | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    decision: str = "allow"
    error: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    pending: list[asyncio.Future[Any]] = field(default_factory=list)  # finish before audit
    guard_ms: float = 0.0
    upstream_span: Any = None
    upstream_started: float | None = None
    upstream_ms: float | None = None
    answer: dict[str, Any] | None = None  # the upstream's JSON body or last stream event
    usage: dict[str, Any] | None = None
    finish_reasons: list[str] | None = None
    ttft_ms: float | None = None
    content: dict[str, str | None] = field(default_factory=dict)
    trace_id: str | None = None  # 32 hex digits of the request's trace, when traced
    target: Target | None = None  # the endpoint table's entry (None: not served)
    client_request_id: str | None = None  # the client's x-client-request-id / x-request-id

    def take_answer(self, body: dict[str, Any] | None) -> None:
        self.answer = body
        usage = body.get("usage") if body else None
        self.usage = usage if isinstance(usage, dict) else None

    def take_stream(self, watched: StreamWatch) -> None:
        self.answer = watched.last
        self.usage = watched.usage
        self.finish_reasons = watched.finish_reasons

    def add(self, result: SideResult, spent_ms: float) -> None:
        self.outcomes += result.outcomes
        self.pending += result.shadow
        self.guard_ms += spent_ms

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", self.request_id.encode())]
        if self.client_request_id is not None:
            headers.append((b"x-client-request-id", self.client_request_id.encode()))
        if self.route is not None and self.outcomes:
            headers.append((b"x-safeguard-decision", self.decision.encode()))
            flagged = [o.policy.id for o in self.outcomes if o.verdict.violation]
            if flagged:
                names = ",".join(sorted(set(flagged)))
                headers.append((b"x-safeguard-policies", names.encode()))
        return headers

    def record(self, total_s: float) -> dict[str, Any]:
        """The audit record (DESIGN §7); content is raw, the audit log applies retention."""
        assert self.tenant is not None
        return {
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "time": self.at,
            "tenant": self.tenant.name,
            "route": self.route.name if self.route else None,
            "endpoint": self.endpoint,
            "model": self.model,
            "stream": self.stream,
            "decision": self.decision,
            "status": self.status,
            "error": self.error,
            "verdicts": [o.record() for o in self.outcomes],
            "timings": {
                "classifier_ms": round_ms(self.guard_ms),
                "upstream_ms": round_ms(self.upstream_ms),
                "total_ms": round_ms(total_s * 1000),
                "ttft_ms": round_ms(self.ttft_ms),
            },
            "content": self.content,
            "trace_id": self.trace_id,
        }


def trace_id_of(span: Any) -> str | None:
    """The W3C trace id of a recording server span (None when tracing is off)."""
    trace_id = getattr(span, "trace_id", 0)
    return f"{trace_id:032x}" if trace_id and span.is_recording() else None


def since(started: float | None) -> float | None:
    return None if started is None else (time.perf_counter() - started) * 1000


def json_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def round_ms(value: float | None) -> float | None:
    """To the hundredth: `round(value, 2)` goes through decimal text, twice the time."""
    return None if value is None else round(value * 100) / 100
