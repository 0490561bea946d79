"""OpenTelemetry tracing for the gateway (DESIGN §7, REFERENCE "OTel GenAI").

One `Telemetry` per process, built from `config.telemetry`:

    tel = Telemetry(cfg.telemetry, classifier_url=cfg.classifier.base_url)
    with tel.server_span("POST", "/v1/chat/completions", scope["headers"]) as span:
        with tel.classification_span(policy.id, policy.version, model, "input") as cspan:
            verdict = await client.classify(policy, text)
            tel.record_verdict(cspan, verdict)          # gen_ai.evaluation.result event
        with tel.upstream_span("chat", model, host, port) as uspan:
            tel.inject(headers)                          # W3C traceparent for the upstream
            ...
            tel.set_response(uspan, response_model=..., input_tokens=..., output_tokens=...)
            tel.set_error(uspan, "timeout")              # on failure only
        tel.set_server_attributes(span, status_code=200, tenant=t, route=r, decision="allow")
    tel.shutdown()                                       # flush on exit

Every `*_span` method returns a context manager that makes the span current, so spans
opened in asyncio tasks created inside the server span (contextvars are copied into
tasks) become its children. `current_span()` returns the innermost one. Spans are
plain OTel spans: `span.set_attribute(...)` works too.

`traces: none` with no injected exporter makes every method a module-level no-op
returning shared objects (~0.1 us a call; ~1-2 us for a whole request). Exporters:
console (stdout JSON), otlp (HTTP/protobuf; endpoint, headers, timeout, compression
from the standard OTEL_EXPORTER_OTLP_* env vars). service.name comes from the config
unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one. The sampler honours
OTEL_TRACES_SAMPLER(_ARG); with a parent-based one (the default), children of a
sampled-out request are not even created. The provider is private to the instance
(never the global one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from proxy.config import Telemetry as TelemetryConfig
    from proxy.guard.safeguard import Verdict

EVALUATION_EVENT = "gen_ai.evaluation.result"
EXPLANATION_MAX_CHARS = 512
SCOPE = "safeguard-gateway"


def build_resource(service_name: str) -> Resource:
    """The process resource: OTEL_* env wins over the config's service name.

    The SDK's default resource already carries a per-process service.instance.id, so
    metrics pushed by several gateway workers stay distinct series.
    """
    env_attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in env_attributes:
        return Resource.create({})
    return Resource.create({"service.name": service_name})


def _host_port(url: str | None) -> tuple[str | None, int | None]:
    if not url:
        return None, None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


class _NoopSpanContext:
    """A reusable, stateless context manager yielding the invalid (non-recording) span."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_CM = _NoopSpanContext()


class _UnsampledChild:
    """Stands in for a child of a sampled-out span: yields that span, records nothing."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace.get_current_span()

    def __exit__(self, *exc: object) -> None:
        return None


_UNSAMPLED_CHILD = _UnsampledChild()


def _noop_cm(*_args: object, **_kwargs: object) -> _NoopSpanContext:
    return _NOOP_CM


def _noop(*_args: object, **_kwargs: object) -> None:
    return None


def _noop_span(*_args: object, **_kwargs: object) -> Span:
    return INVALID_SPAN


def _upstream_attributes(
    operation: str, model: str | None, server_address: str, server_port: int
) -> tuple[str, dict[str, Any]]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "server.address": server_address,
        "server.port": server_port,
    }
    if model:
        attributes["gen_ai.request.model"] = model
    return (f"{operation} {model}" if model else operation), attributes


def _batch(exporter: SpanExporter) -> BatchSpanProcessor:
    # The SDK's 2048-span queue fills in well under its 5 s export delay at a few
    # thousand requests/s (4 spans each); OTEL_BSP_MAX_QUEUE_SIZE still wins.
    queue = None if "OTEL_BSP_MAX_QUEUE_SIZE" in os.environ else 16_384
    return BatchSpanProcessor(exporter, max_queue_size=queue)


class Telemetry:
    """Tracing for one gateway process; see the module docstring for the API."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        exporter: SpanExporter | None = None,
        classifier_url: str | None = None,
        classifier_provider: str = "sglang",
    ) -> None:
        self.enabled = exporter is not None or config.traces != "none"
        self._provider: TracerProvider | None = None
        if not self.enabled:
            # Instance attributes shadow the methods: the disabled path is one call.
            self.server_span = _noop_cm  # type: ignore[method-assign]
            self.classification_span = _noop_cm  # type: ignore[method-assign]
            self.upstream_span = _noop_cm  # type: ignore[method-assign]
            self.start_upstream_span = _noop_span  # type: ignore[method-assign]
            self.record_verdict = _noop  # type: ignore[method-assign]
            self.set_server_attributes = _noop  # type: ignore[method-assign]
            self.set_response = _noop  # type: ignore[method-assign]
            self.set_error = _noop  # type: ignore[method-assign]
            self.inject = _noop  # type: ignore[method-assign]
            self.current_span = _noop_span  # type: ignore[method-assign]
            return
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        elif config.traces == "console":
            processor = _batch(ConsoleSpanExporter())
        elif config.traces == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = _batch(OTLPSpanExporter())
        else:
            raise ValueError(f"unknown telemetry.traces {config.traces!r}")
        sampler = None  # the SDK's default: OTEL_TRACES_SAMPLER(_ARG), else always on
        if config.sample_ratio < 1.0 and "OTEL_TRACES_SAMPLER" not in os.environ:
            sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._provider = TracerProvider(
            resource=build_resource(config.service_name), sampler=sampler
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer(SCOPE)
        # A parent-based sampler drops every child of a dropped span, so skip making them.
        self._skip_unsampled = isinstance(self._provider.sampler, ParentBased)
        self._propagator = TraceContextTextMapPropagator()
        address, port = _host_port(classifier_url)
        self._classifier_attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": classifier_provider,
        }
        if address:
            self._classifier_attrs["server.address"] = address
            self._classifier_attrs["server.port"] = port

    # -- spans ---------------------------------------------------------------------------

    def server_span(
        self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> AbstractContextManager[Span]:
        """SERVER span for one request, continuing the client's W3C trace context if any.

        `path` becomes the span name and `url.path`: pass the endpoint path (low
        cardinality), not a URL with ids or a query string.
        """
        traceparent = tracestate = None
        for name, value in headers:
            if name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value if tracestate is None else tracestate + b"," + value
        if traceparent is None:
            parent = Context()  # a new root, whatever is current
        else:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = self._propagator.extract(carrier, context=Context())
        return self._tracer.start_as_current_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )

    def classification_span(
        self, policy_id: str, policy_version: str, model: str, side: str
    ) -> AbstractContextManager[Span]:
        """CLIENT inference span for one classifier call: `chat {model}` (GenAI semconv)."""
        if self._skip_unsampled and self._parent_unsampled():
            return _UNSAMPLED_CHILD
        attributes = dict(self._classifier_attrs)
        attributes["gen_ai.request.model"] = model
        attributes["safeguard.policy.id"] = policy_id
        attributes["safeguard.policy.version"] = policy_version
        attributes["safeguard.side"] = side
        return self._tracer.start_as_current_span(
            f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def upstream_span(
        self, operation: str, model: str | None, server_address: str, server_port: int
    ) -> AbstractContextManager[Span]:
        """CLIENT span for the upstream call, named `{operation} {model}`."""
        if self._skip_unsampled and self._parent_unsampled():
            return _UNSAMPLED_CHILD
        name, attributes = _upstream_attributes(operation, model, server_address, server_port)
        return self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def start_upstream_span(
        self, operation: str, model: str | None, server_address: str, server_port: int
    ) -> Span:
        """The upstream CLIENT span, started but not made current: a streamed answer
        outlives the call that started it, so the caller ends it (`span.end()`) when the
        last byte is through, from whichever task that is."""
        if self._skip_unsampled and self._parent_unsampled():
            return INVALID_SPAN
        name, attributes = _upstream_attributes(operation, model, server_address, server_port)
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def _parent_unsampled() -> bool:
        parent = trace.get_current_span()
        return parent.get_span_context().is_valid and not parent.is_recording()

    def current_span(self) -> Span:
        return trace.get_current_span()

    # -- attributes and events -----------------------------------------------------------

    def record_verdict(self, span: Span, verdict: Verdict) -> None:
        """A `gen_ai.evaluation.result` event for one policy verdict; errors mark the span."""
        if not span.is_recording():
            return
        label = verdict.label
        attributes: dict[str, Any] = {
            "gen_ai.evaluation.name": verdict.policy_id,
            "gen_ai.evaluation.score.label": label,
            "safeguard.policy.version": verdict.policy_version,
            "safeguard.cache_hit": verdict.cache_hit,
            "safeguard.verdict.source": verdict.source,
            "safeguard.shadow": verdict.shadow,
        }
        if label != "error":
            attributes["gen_ai.evaluation.score.value"] = 1.0 if verdict.violation else 0.0
        if verdict.category:
            attributes["safeguard.verdict.category"] = verdict.category
        explanation = verdict.rationale or verdict.error
        if explanation:
            attributes["gen_ai.evaluation.explanation"] = explanation[:EXPLANATION_MAX_CHARS]
        if verdict.error:
            error_type = verdict.error.split(":", 1)[0]
            attributes["error.type"] = error_type
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, verdict.error[:EXPLANATION_MAX_CHARS]))
        span.add_event(EVALUATION_EVENT, attributes)

    def set_server_attributes(
        self,
        span: Span,
        *,
        status_code: int | None = None,
        tenant: str | None = None,
        route: str | None = None,
        decision: str | None = None,
    ) -> None:
        """Outcome of a request; a 5xx marks the SERVER span as an error (HTTP semconv)."""
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {}
        if tenant is not None:
            attributes["safeguard.tenant"] = tenant
        if route is not None:
            attributes["safeguard.route"] = route
        if decision is not None:
            attributes["safeguard.decision"] = decision
        if status_code is not None:
            attributes["http.response.status_code"] = status_code
            if status_code >= 500:
                attributes["error.type"] = str(status_code)
                span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)

    def set_response(
        self,
        span: Span,
        *,
        response_model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """gen_ai.response.* and gen_ai.usage.* of the upstream answer (None = unknown)."""
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {}
        if response_model is not None:
            attributes["gen_ai.response.model"] = response_model
        if response_id is not None:
            attributes["gen_ai.response.id"] = response_id
        if finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
        if input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = input_tokens
        if output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        span.set_attributes(attributes)

    def set_error(self, span: Span, error_type: str, description: str | None = None) -> None:
        """`error.type` plus ERROR status (e.g. "timeout", "500", an exception class name)."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, description))

    # -- propagation and lifecycle -------------------------------------------------------

    def inject(self, headers: dict[str, str], span: Span | None = None) -> None:
        """Add `traceparent`/`tracestate` of `span` (default: the current span) to headers."""
        context = None if span is None else trace.set_span_in_context(span, Context())
        self._propagator.inject(headers, context=context)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._provider.force_flush(timeout_millis) if self._provider else True

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporter; safe to call twice."""
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()
