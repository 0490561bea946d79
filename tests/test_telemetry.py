"""Tracing: span tree and GenAI attributes (in-memory exporter), W3C propagation, and a
real OTLP/HTTP export decoded by a loopback receiver."""

from __future__ import annotations

import asyncio
import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from proxy.config import Telemetry as TelemetryConfig
from proxy.guard.safeguard import Verdict
from proxy.telemetry import Telemetry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

HEADERS = [(b"host", b"gw"), (b"content-type", b"application/json")]
VIOLATION = Verdict("hate", "3", True, category="H2", rationale="slur in text", cache_hit=True)
SAFE = Verdict("pii", "1", False, rationale="nothing personal", latency_ms=12.0)


def traced() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tel = Telemetry(
        TelemetryConfig(service_name="gw-test"),
        exporter=exporter,
        classifier_url="http://127.0.0.1:30000/v1",
    )
    return tel, exporter


async def one_request(tel: Telemetry, headers=HEADERS) -> dict[str, str]:
    """What the gateway does per request: parallel classifications, then the upstream."""
    upstream_headers: dict[str, str] = {}

    async def classify(verdict: Verdict, side: str) -> None:
        with tel.classification_span(
            verdict.policy_id, verdict.policy_version, "gpt-oss-safeguard-20b", side
        ) as span:
            await asyncio.sleep(0)
            tel.record_verdict(span, verdict)

    with tel.server_span("POST", "/v1/chat/completions", headers) as server:
        await asyncio.gather(
            asyncio.create_task(classify(VIOLATION, "input")),
            asyncio.create_task(classify(SAFE, "input")),
        )
        with tel.upstream_span("chat", "gpt-4o-mini", "api.example.com", 443) as up:
            tel.inject(upstream_headers)
            tel.set_response(
                up,
                response_model="gpt-4o-mini-2024-07-18",
                response_id="chatcmpl-1",
                finish_reasons=["stop"],
                input_tokens=11,
                output_tokens=7,
            )
        tel.set_server_attributes(
            server, status_code=200, tenant="acme", route="chat-default", decision="allow"
        )
    return upstream_headers


def by_name(exporter: InMemorySpanExporter) -> dict[str, list]:
    spans: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    return spans


async def test_server_span_nests_classifications_and_upstream_with_genai_attributes():
    tel, exporter = traced()
    await one_request(tel)
    spans = by_name(exporter)
    assert sorted(spans) == [
        "POST /v1/chat/completions",
        "chat gpt-4o-mini",
        "chat gpt-oss-safeguard-20b",
    ]
    (server,) = spans["POST /v1/chat/completions"]
    (upstream,) = spans["chat gpt-4o-mini"]
    classifications = spans["chat gpt-oss-safeguard-20b"]
    assert len(classifications) == 2

    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert dict(server.attributes) == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 200,
        "safeguard.tenant": "acme",
        "safeguard.route": "chat-default",
        "safeguard.decision": "allow",
    }
    assert server.resource.attributes["service.name"] == "gw-test"

    trace_id = server.context.trace_id
    for child in [*classifications, upstream]:
        assert child.context.trace_id == trace_id
        assert child.parent.span_id == server.context.span_id

    assert upstream.kind is SpanKind.CLIENT
    assert dict(upstream.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "server.address": "api.example.com",
        "server.port": 443,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
    }

    hate = next(s for s in classifications if s.attributes["safeguard.policy.id"] == "hate")
    assert hate.kind is SpanKind.CLIENT
    assert dict(hate.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "sglang",
        "gen_ai.request.model": "gpt-oss-safeguard-20b",
        "server.address": "127.0.0.1",
        "server.port": 30000,
        "safeguard.policy.id": "hate",
        "safeguard.policy.version": "3",
        "safeguard.side": "input",
    }
    (event,) = hate.events
    assert event.name == "gen_ai.evaluation.result"
    assert dict(event.attributes) == {
        "gen_ai.evaluation.name": "hate",
        "gen_ai.evaluation.score.label": "violation",
        "gen_ai.evaluation.score.value": 1.0,
        "gen_ai.evaluation.explanation": "slur in text",
        "safeguard.policy.version": "3",
        "safeguard.cache_hit": True,
        "safeguard.verdict.source": "model",
        "safeguard.verdict.category": "H2",
        "safeguard.shadow": False,
    }
    pii = next(s for s in classifications if s.attributes["safeguard.policy.id"] == "pii")
    (event,) = pii.events
    assert event.attributes["gen_ai.evaluation.score.label"] == "safe"
    assert event.attributes["gen_ai.evaluation.score.value"] == 0.0
    assert event.attributes["safeguard.cache_hit"] is False
    assert pii.status.status_code is StatusCode.UNSET
    tel.shutdown()


async def test_incoming_traceparent_is_continued_and_injected_upstream():
    tel, exporter = traced()
    headers = [
        *HEADERS,
        (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()),
        (b"tracestate", b"vendor=abc"),
    ]
    upstream_headers = await one_request(tel, headers)
    spans = by_name(exporter)
    (server,) = spans["POST /v1/chat/completions"]
    (upstream,) = spans["chat gpt-4o-mini"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent.span_id == int(PARENT_ID, 16)
    assert server.parent.is_remote

    match = TRACEPARENT.match(upstream_headers["traceparent"])
    assert match, upstream_headers
    assert match.group(1) == TRACE_ID
    assert match.group(2) == format(upstream.context.span_id, "016x")
    assert upstream_headers["tracestate"] == "vendor=abc"
    tel.shutdown()


async def test_no_or_malformed_traceparent_starts_a_new_trace():
    tel, exporter = traced()
    await one_request(tel, [*HEADERS, (b"traceparent", b"00-zzzz-bad-01")])
    await one_request(tel)
    servers = by_name(exporter)["POST /v1/chat/completions"]
    assert len(servers) == 2
    assert all(s.parent is None for s in servers)
    assert servers[0].context.trace_id != servers[1].context.trace_id
    assert format(servers[0].context.trace_id, "032x") != TRACE_ID
    tel.shutdown()


def test_inject_with_explicit_span_and_without_any_span():
    tel, exporter = traced()
    empty: dict[str, str] = {}
    tel.inject(empty)  # no current span: nothing to propagate
    assert empty == {}
    with tel.server_span("GET", "/v1/models", HEADERS):
        with tel.upstream_span("models", None, "127.0.0.1", 8000) as up:
            pass
        explicit: dict[str, str] = {}
        tel.inject(explicit, span=up)
    match = TRACEPARENT.match(explicit["traceparent"])
    assert match and match.group(2) == format(up.context.span_id, "016x")
    assert int(match.group(3), 16) & 1  # sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["models", "GET /v1/models"]
    tel.shutdown()


def test_errors_mark_spans():
    tel, exporter = traced()
    failed = Verdict("hate", "3", False, source="error", error="timeout: no answer within 20s")
    with pytest.raises(RuntimeError), tel.server_span("POST", "/v1/embeddings", HEADERS) as server:
        with tel.classification_span("hate", "3", "m", "output") as span:
            tel.record_verdict(span, failed)
        with tel.upstream_span("embeddings", "e5", "127.0.0.1", 8000) as up:
            tel.set_error(up, "http_error", "HTTP 502")
        tel.set_server_attributes(server, status_code=503)
        raise RuntimeError("boom")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    classification = spans["chat m"]
    assert classification.status.status_code is StatusCode.ERROR
    assert classification.attributes["error.type"] == "timeout"
    (event,) = classification.events
    assert event.attributes["gen_ai.evaluation.score.label"] == "error"
    assert event.attributes["error.type"] == "timeout"
    assert event.attributes["gen_ai.evaluation.explanation"].startswith("timeout: no answer")
    assert "gen_ai.evaluation.score.value" not in event.attributes
    upstream = spans["embeddings e5"]
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.status.description == "HTTP 502"
    assert upstream.attributes["error.type"] == "http_error"
    server = spans["POST /v1/embeddings"]
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 503
    assert [e.name for e in server.events] == ["exception"]
    tel.shutdown()


def test_4xx_is_not_a_server_error_and_long_rationales_are_truncated():
    tel, exporter = traced()
    with tel.server_span("POST", "/v1/chat/completions", HEADERS) as server:
        with tel.classification_span("hate", "3", "m", "input") as span:
            tel.record_verdict(span, Verdict("hate", "3", True, rationale="x" * 5000))
        tel.set_server_attributes(server, status_code=403, decision="block")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["POST /v1/chat/completions"].status.status_code is StatusCode.UNSET
    explanation = spans["chat m"].events[0].attributes["gen_ai.evaluation.explanation"]
    assert explanation == "x" * 512
    tel.shutdown()


def test_disabled_is_a_shared_noop():
    tel = Telemetry(TelemetryConfig(traces="none"))
    assert not tel.enabled
    cm = tel.server_span("POST", "/v1/chat/completions", HEADERS)
    assert cm is tel.classification_span("p", "1", "m", "input")
    with cm as span, tel.upstream_span("chat", "m", "h", 1) as up:
        assert span is INVALID_SPAN and up is INVALID_SPAN
        assert not span.is_recording()
        tel.record_verdict(span, VIOLATION)
        tel.set_response(up, input_tokens=1)
        tel.set_error(up, "x")
        tel.set_server_attributes(span, status_code=200, tenant="t")
        headers: dict[str, str] = {}
        tel.inject(headers)
        assert headers == {}
        assert tel.current_span() is INVALID_SPAN
    assert tel.force_flush()
    tel.shutdown()


def test_env_service_name_wins_over_config(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetryConfig(service_name="from-config"), exporter=exporter)
    with tel.server_span("GET", "/healthz", []):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "from-env"
    tel.shutdown()


def test_resource_has_an_instance_id_and_takes_env_attributes(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7,deployment.env=x")
    tel, exporter = traced()
    with tel.server_span("GET", "/healthz", []):
        pass
    resource = exporter.get_finished_spans()[0].resource.attributes
    assert resource["service.instance.id"] == "pod-7"
    assert resource["service.name"] == "gw-test"
    assert resource["deployment.env"] == "x"
    tel.shutdown()
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
    tel, exporter = traced()
    with tel.server_span("GET", "/healthz", []):
        pass
    assert exporter.get_finished_spans()[0].resource.attributes["service.instance.id"]
    tel.shutdown()


@pytest.mark.parametrize("sampler", ["always_off", "parentbased_traceidratio"])
async def test_sampled_out_requests_record_nothing_but_still_propagate(monkeypatch, sampler):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tel, exporter = traced()
    flags = "01" if sampler == "always_off" else "00"  # parent-based: follow the client
    headers = [
        *HEADERS,
        (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{flags}".encode()),
        (b"tracestate", b"vendor=abc"),
    ]
    upstream_headers = await one_request(tel, headers)
    assert exporter.get_finished_spans() == ()
    match = TRACEPARENT.match(upstream_headers["traceparent"])
    assert match and match.group(1) == TRACE_ID and match.group(3) == "00"
    assert upstream_headers["tracestate"] == "vendor=abc"  # the client's, passed on
    tel.shutdown()


def test_calls_under_a_sampled_out_request_are_that_request_span(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tel, _ = traced()
    with tel.server_span("POST", "/v1/chat/completions", HEADERS) as server:
        with tel.classification_span("spam", "v1", "gpt-oss-safeguard-20b", "input") as check:
            assert check is server
        assert tel.start_upstream_span("chat", "gpt-4o-mini", "api.example.com", 443) is server
    tel.shutdown()


def test_unknown_exporter_is_rejected():
    with pytest.raises(ValueError, match="traces"):
        Telemetry(TelemetryConfig(traces="zipkin"))


# -- a real OTLP/HTTP export ---------------------------------------------------------------


def attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        field = kv.value.WhichOneof("value")
        value = getattr(kv.value, field)
        if field == "array_value":
            value = tuple(getattr(v, v.WhichOneof("value")) for v in value.values)
        out[kv.key] = value
    return out


async def test_real_otlp_http_export_to_loopback_receiver(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant-token=abc123")
    tel = Telemetry(TelemetryConfig(traces="otlp", service_name="gw-otlp"))
    await one_request(tel)
    tel.shutdown()  # flushes the batch processor

    assert receiver.posts, "no OTLP export arrived"
    spans, resources = [], []
    for path, headers, body in receiver.posts:
        assert path == "/v1/traces"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["x-tenant-token"] == "abc123"
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resources.append(attrs(rs.resource.attributes))
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    assert all(r["service.name"] == "gw-otlp" for r in resources)
    names = sorted(s.name for s in spans)
    assert names == [
        "POST /v1/chat/completions",
        "chat gpt-4o-mini",
        "chat gpt-oss-safeguard-20b",
        "chat gpt-oss-safeguard-20b",
    ]
    assert len({s.trace_id for s in spans}) == 1
    server = next(s for s in spans if s.name.startswith("POST"))
    assert server.kind == server.SPAN_KIND_SERVER
    assert not server.parent_span_id
    children = [s for s in spans if s is not server]
    assert all(s.parent_span_id == server.span_id for s in children)
    assert all(s.kind == s.SPAN_KIND_CLIENT for s in children)

    upstream = next(s for s in spans if s.name == "chat gpt-4o-mini")
    assert attrs(upstream.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "server.address": "api.example.com",
        "server.port": 443,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
    }
    events = [
        attrs(e.attributes)
        for s in spans
        if s.name == "chat gpt-oss-safeguard-20b"
        for e in s.events
        if e.name == "gen_ai.evaluation.result"
    ]
    assert sorted(
        (e["gen_ai.evaluation.name"], e["gen_ai.evaluation.score.label"]) for e in events
    ) == [
        ("hate", "violation"),
        ("pii", "safe"),
    ]
    assert attrs(server.attributes)["safeguard.decision"] == "allow"


def test_sample_ratio_samples_a_share_of_new_traces():
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetryConfig(traces="console", sample_ratio=0.25), exporter=exporter)
    for _ in range(400):
        with tel.server_span("POST", "/v1/chat/completions", []):
            pass
    kept = len(exporter.get_finished_spans())
    assert 40 <= kept <= 180  # about a quarter, never all, never none
    # a sampled parent from the client is always honoured
    parent = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    exporter.clear()
    for _ in range(20):
        with tel.server_span("POST", "/v1/chat/completions", parent):
            pass
    assert len(exporter.get_finished_spans()) == 20
