"""One trace per request across gateway, classifications and upstream; /metrics text."""

from __future__ import annotations

import re
import time

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import KEY
from tests.test_guard import GUARDED, chat, client

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def finished_trace(exporter: InMemorySpanExporter) -> tuple:
    """The spans once the SERVER span has ended: the client can hold the whole answer a
    moment before the gateway closes its spans."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        if any(s.kind == SpanKind.SERVER for s in spans):
            return spans
        time.sleep(0.01)
    raise AssertionError("the request's server span never ended")


def test_one_trace_covers_gateway_classifier_and_upstream(make_gateway, upstream):
    exporter = InMemorySpanExporter()
    gw = make_gateway(guarded=GUARDED, options={"span_exporter": exporter})
    chunks = list(
        client(gw).chat.completions.create(
            model="guarded-1",
            messages=[{"role": "user", "content": "say: hello tracing"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        )
    )
    assert chunks
    spans = finished_trace(exporter)
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    upstream_span = next(s for s in spans if s.name == "chat guarded-1")
    assert (
        upstream_span.kind == SpanKind.CLIENT
        and upstream_span.parent.span_id == server.context.span_id
    )
    attrs = upstream_span.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "guarded-1"
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["server.address"] == "127.0.0.1"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 2
    classifications = [s for s in spans if s.name.startswith("chat openai/gpt-oss-safeguard")]
    assert {s.attributes["safeguard.policy.id"] for s in classifications} >= {
        "cheating",
        "spam",
        "violence",
    }
    for span in classifications:
        assert span.parent.span_id == server.context.span_id
        [event] = [e for e in span.events if e.name == "gen_ai.evaluation.result"]
        assert event.attributes["gen_ai.evaluation.name"] == span.attributes["safeguard.policy.id"]
        assert event.attributes["gen_ai.evaluation.score.label"] == "safe"
    # W3C trace context reached the upstream, continuing the client's trace
    sent = upstream[0].requests[-1].headers["traceparent"]
    assert sent.split("-")[1] == TRACE_ID
    assert sent.split("-")[2] == format(upstream_span.context.span_id, "016x")


def test_metrics_endpoint_is_prometheus_text(make_gateway):
    gw = make_gateway(guarded=GUARDED)
    chat(gw, "guarded-1", "hello")
    chat(gw, "guarded-1", "buy now")
    requests = (
        'safeguard_requests_total{route="guarded",endpoint="/v1/chat/completions",status="200"}'
    )
    text = scrape_until(gw, requests + " 2")  # counted once each request has finished
    line = re.compile(
        r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?[0-9.e+Inf]+$'
    )
    for row in text.splitlines():
        assert row.startswith("# ") or line.match(row), row
    assert (
        'safeguard_requests_total{route="guarded",endpoint="/v1/chat/completions",status="200"} 2'
        in text
    )
    assert (
        'safeguard_decisions_total{policy="spam",action="annotate",side="input",shadow="false"} 1'
        in text
    )
    assert 'safeguard_classifier_cache_total{result="miss"}' in text
    assert (
        httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code
        == 200
    )


def scrape_until(gw, expected: str) -> str:
    deadline = time.monotonic() + 5
    while expected not in (text := httpx.get(gw.url + "/metrics").text):
        assert time.monotonic() < deadline, f"{expected!r} never appeared"
        time.sleep(0.01)
    return text


def test_client_chosen_paths_do_not_grow_the_metric_labels(make_gateway):
    gw = make_gateway()
    for i in range(5):
        assert httpx.post(f"{gw.url}/v1/random-{i}", content=b"{}").status_code == 401
    text = scrape_until(gw, 'endpoint="/v1/other",status="401"} 5')
    assert "random" not in text
    assert 'endpoint="/v1/other",status="401"} 5' in text


def test_gateway_traces_reach_a_real_otlp_receiver_as_one_trace(
    make_gateway, receiver, monkeypatch
):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    gw = make_gateway(guarded=GUARDED, raw={"telemetry": {"traces": "otlp"}})
    chat(gw, "guarded-1", "say: exported")
    gw.handle.stop()  # on shutdown the recorder exports what it has
    spans = [
        span
        for _, _, body in receiver.posts
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert len({s.trace_id for s in spans}) == 1
    names = [s.name for s in spans]
    assert "POST /v1/chat/completions" in names and "chat guarded-1" in names
    assert sum(n.startswith("chat openai/gpt-oss-safeguard") for n in names) == 5  # 3 in, 2 out


def test_token_metrics_count_untraced_pass_through_answers_and_streams(make_gateway):
    from tests.test_metrics import parse, value

    gw = make_gateway()  # traces: none, open route
    sdk = client(gw)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    def outputs() -> float:
        families = parse(httpx.get(gw.url + "/metrics").text)
        try:
            return value(families, "safeguard_upstream_tokens_total", route="open", type="output")
        except (KeyError, AssertionError):
            return 0.0

    deadline = time.monotonic() + 5
    while outputs() < 4 and time.monotonic() < deadline:  # 2 tokens per fake answer
        time.sleep(0.02)
    assert outputs() == 4


def test_spans_carry_usage_with_metrics_off(make_gateway):
    exporter = InMemorySpanExporter()
    gw = make_gateway(raw={"telemetry": {"metrics": "none"}}, options={"span_exporter": exporter})
    sdk = client(gw)
    for stream in (False, True):
        exporter.clear()
        answer = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a"}],
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        if stream:
            list(answer)
        upstream = next(s for s in finished_trace(exporter) if s.name == "chat gpt-4o-mini")
        assert upstream.attributes["gen_ai.usage.output_tokens"] == 2, stream
        assert upstream.attributes["gen_ai.response.finish_reasons"] == ("stop",), stream
