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

Spans opened in asyncio tasks created inside a span (contextvars are copied into tasks)
become its children; `current_span()` returns the innermost one.

Why not the SDK's tracer: creating and ending the two spans of a pass-through request
costs ~90 us of event-loop time through the SDK, about half of what the request itself
costs. Here a span is a slotted record (~3 us), and the rest happens off the request
path: the gateway's recorder process (proxy.recorder) encodes spans to OTLP protobuf
(proxy.otlp) and POSTs them, and any SDK `SpanExporter` (console; the in-memory one in
tests) gets ordinary SDK `ReadableSpan`s (proxy.span_export). The OTel conventions stay:
the resource comes from the SDK (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the
config's service name), the sampler from `OTEL_TRACES_SAMPLER(_ARG)` (else
`telemetry.sample_ratio`, parent-based), W3C trace context in and out, and the OTLP
exporter from `OTEL_EXPORTER_OTLP_*`.

`traces: none` with no injected exporter makes every method a module-level no-op
returning shared objects (~0.1 us a call).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import INVALID_SPAN
from opentelemetry.trace import Span as ApiSpan

from proxy.config import host_port
from proxy.span_export import SpanExport, build_export
from proxy.spans import (
    CLIENT,
    ERROR,
    LOW64,
    SERVER,
    Active,
    Span,
    UnsampledSpan,
    Within,
    current,
    new_id,
    parse_traceparent,
    sampler_from_env,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from proxy.config import Telemetry as TelemetryConfig
    from proxy.guard.safeguard import Verdict


EVALUATION_EVENT = "gen_ai.evaluation.result"
EXPLANATION_MAX_CHARS = 512
SCOPE = "safeguard-gateway"


def build_resource(service_name: str) -> Resource:
    """The process resource: OTEL_* env wins over the config's service name.

    The SDK's default resource already carries a per-process service.instance.id, so
    several gateway workers stay distinct.
    """
    env_attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in env_attributes:
        return Resource.create({})
    return Resource.create({"service.name": service_name})


class _Noop:
    """The disabled path's context manager: yields the OTel API's invalid span."""

    __slots__ = ()

    def __enter__(self) -> ApiSpan:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_CM = _Noop()


def _noop_cm(*_args: object, **_kwargs: object) -> _Noop:
    return _NOOP_CM


def _noop(*_args: object, **_kwargs: object) -> None:
    return None


def _noop_span(*_args: object, **_kwargs: object) -> ApiSpan:
    return INVALID_SPAN


class Telemetry:
    """Tracing for one gateway process; see the module docstring for the API."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        exporter: SpanExporter | None = None,
        sink: SpanExport | None = None,
        classifier_url: str | None = None,
        classifier_provider: str = "sglang",
    ) -> None:
        """`exporter`: an SDK exporter that gets each span as it ends (tests, embedding);
        `sink`: where finished spans go instead of this process's own exporter thread
        (the gateway passes its proxy.recorder)."""
        self.enabled = exporter is not None or config.traces != "none"
        self._export: SpanExport | None = None
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
        self.resource = build_resource(config.service_name)
        if sink is not None and exporter is None:
            self._export = sink
        else:
            self._export = build_export(config.traces, exporter, self.resource, SCOPE)
        self._finish = self._export.add
        self._parent_based, self._bound = sampler_from_env(config.sample_ratio)
        address, port = host_port(classifier_url) if classifier_url else ("", 0)
        self._classifier_attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": classifier_provider,
        }
        if address:
            self._classifier_attrs["server.address"] = address
            self._classifier_attrs["server.port"] = port

    # -- spans ---------------------------------------------------------------------------

    def server_span(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Active:
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
        parent = None
        if traceparent is not None:
            state = tracestate.decode("latin-1") if tracestate else ""
            parent = parse_traceparent(traceparent.decode("latin-1"), state)
        attributes = {"http.request.method": method, "url.path": path}
        return Active(self._root(f"{method} {path}", SERVER, attributes, parent))

    def classification_span(
        self, policy_id: str, policy_version: str, model: str, side: str
    ) -> Active | Within:
        """CLIENT inference span for one classifier call: `chat {model}` (GenAI semconv)."""
        parent = current.get()
        if parent is not None and not parent.sampled:
            return Within(parent)
        attributes = dict(self._classifier_attrs)
        attributes["gen_ai.request.model"] = model
        attributes["safeguard.policy.id"] = policy_id
        attributes["safeguard.policy.version"] = policy_version
        attributes["safeguard.side"] = side
        return Active(self._client_span(parent, f"chat {model}", attributes))

    def upstream_span(
        self, operation: str, model: str | None, server_address: str, server_port: int
    ) -> Active | Within:
        """CLIENT span for the upstream call, named `{operation} {model}`."""
        return self._enter(self.start_upstream_span(operation, model, server_address, server_port))

    def start_upstream_span(
        self,
        operation: str,
        model: str | None,
        server_address: str,
        server_port: int,
        provider: str = "openai",
    ) -> Span:
        """The upstream CLIENT span, started but not made current: a streamed answer
        outlives the call that started it, so the caller ends it (`span.end()`) when the
        last byte is through, from whichever task that is."""
        parent = current.get()
        if parent is not None and not parent.sampled:
            return parent
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "server.address": server_address,
            "server.port": server_port,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        return self._client_span(parent, f"{operation} {model}" if model else operation, attributes)

    def _client_span(self, parent: Span | None, name: str, attributes: dict[str, Any]) -> Span:
        """A CLIENT span under `parent` (a sampled one: callers return a sampled-out parent
        before building attributes), or outside any request a root of its own."""
        if parent is None:
            return self._root(name, CLIENT, attributes, None)
        return Span(
            name, CLIENT, parent.trace_id, parent.span_id, False, parent.trace_state,
            attributes, self._finish,
        )  # fmt: skip

    def _root(
        self,
        name: str,
        kind: int,
        attributes: dict[str, Any],
        remote: tuple[int, int, bool, str] | None,
    ) -> Span:
        """A span with no local parent: a new trace, or continuing the client's `remote`
        (trace id, parent id, sampled, tracestate); sampled here, once per trace."""
        if remote is None:
            trace_id, parent_id, parent_sampled, state = new_id(128), 0, None, ""
        else:
            trace_id, parent_id, parent_sampled, state = remote
        if self._parent_based and parent_sampled is not None:
            sampled = parent_sampled
        else:
            sampled = trace_id & LOW64 < self._bound
        if not sampled:
            return UnsampledSpan(trace_id, state)
        return Span(
            name, kind, trace_id, parent_id, remote is not None, state, attributes, self._finish
        )

    @staticmethod
    def _enter(span: Span) -> Active | Within:
        return Active(span) if span is not current.get() else Within(span)

    def current_span(self) -> Span | ApiSpan:
        return current.get() or INVALID_SPAN

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
            span.set_status(ERROR, verdict.error[:EXPLANATION_MAX_CHARS])
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
        attributes = span.attributes
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
                span.set_status(ERROR)

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
        attributes = span.attributes
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

    def set_error(self, span: Span, error_type: str, description: str | None = None) -> None:
        """`error.type` plus ERROR status (e.g. "timeout", "500", an exception class name)."""
        span.set_attribute("error.type", error_type)
        span.set_status(ERROR, description)

    # -- propagation and lifecycle -------------------------------------------------------

    def inject(self, headers: dict[str, str], span: Span | None = None) -> None:
        """Add `traceparent`/`tracestate` of `span` (default: the current span) to headers."""
        span = span if span is not None else current.get()
        if span is None:
            return
        headers["traceparent"] = span.traceparent()
        if span.trace_state:
            headers["tracestate"] = span.trace_state

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._export.force_flush(timeout_millis / 1000) if self._export else True

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporter; safe to call twice."""
        export, self._export = self._export, None
        if export is not None:
            export.shutdown()
