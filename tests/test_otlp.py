"""The OTLP wire encoder against the SDK's own encoding of the same spans."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource

from proxy import otlp
from proxy.span_export import ReadableConverter
from proxy.spans import CLIENT, ERROR, SERVER, Span

RESOURCE = Resource.create({"service.name": "gw-test", "deployment.env": "ci"})


def make_span(name: str, kind: int, parent: int = 0, remote: bool = False, state: str = "") -> Span:
    return Span(name, kind, 0x4BF92F3577B34DA6A3CE929D0E0E4736, parent, remote, state, {}, None)


def spans() -> list[Span]:
    server = make_span("POST /v1/chat/completions", SERVER, 0x00F067AA0BA902B7, True, "v=abc")
    server.attributes.update(
        {"http.request.method": "POST", "http.response.status_code": 503, "error.type": "503"}
    )
    server.set_status(ERROR)
    classification = make_span("chat gpt-oss-safeguard-20b", CLIENT, server.span_id)
    classification.attributes.update(
        {"safeguard.policy.id": "hate", "server.port": 30000, "über": "naïve ✓"}
    )
    classification.events.append(
        (
            "gen_ai.evaluation.result",
            classification.start_ns + 5,
            {
                "gen_ai.evaluation.score.label": "violation",
                "gen_ai.evaluation.score.value": 1.0,
                "safeguard.cache_hit": True,
                "safeguard.shadow": False,
                "gen_ai.evaluation.explanation": "x" * 300,  # a length over one varint byte
            },
        )
    )
    classification.set_status(ERROR, "timeout: no answer within 20s")
    upstream = make_span("chat gpt-4o-mini", CLIENT, server.span_id)
    upstream.attributes.update(
        {
            "gen_ai.response.finish_reasons": ("stop", "length"),
            "gen_ai.usage.input_tokens": 11,
            "offset": -3,
            "ratio": 0.25,
            "big": 2**40,
            "listed": ["a", "b"],  # unhashable: the uncached path
            "mixed": (1, 1.0, True),  # equal as tuples: must not share a cache entry
        }
    )
    root = make_span("GET /v1/models", SERVER)
    for span in (server, classification, upstream, root):
        span.end()
    server.set_status(0)  # ignored once ended
    return [server, classification, upstream, root]


def test_encoding_equals_the_sdk_encoding():
    batch = spans()
    convert = ReadableConverter(RESOURCE, "safeguard-gateway")
    expected = encode_spans([convert(s) for s in batch])
    header = otlp.resource_header(RESOURCE.attributes, "safeguard-gateway")
    encoded = otlp.export_request(header, otlp.span_entries(s.fields() for s in batch))
    ours = ExportTraceServiceRequest.FromString(encoded)
    assert ours == expected
    (resource_spans,) = ours.resource_spans
    server, classification, upstream, root = resource_spans.scope_spans[0].spans
    assert server.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert server.flags == 0x300  # the parent is remote
    assert root.parent_span_id == b"" and root.flags == 0x100
    assert classification.status.message == "timeout: no answer within 20s"
    assert len(classification.events[0].attributes) == 5
    assert [v.string_value for v in upstream.attributes[0].value.array_value.values] == [
        "stop",
        "length",
    ]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1, -1, -(2**63)])
def test_int_values_round_trip(value):
    assert AnyValue.FromString(otlp.any_value(value)).int_value == value


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1])
def test_ints_beyond_int64_become_text(value):
    assert AnyValue.FromString(otlp.any_value(value)).string_value == str(value)


def test_cached_scalars_keep_their_types():
    for value in (1, 1.0, True, (1,), (1.0,), (True,), ("1",), ("stop",), ("stop", "length")):
        expected = otlp.key_value(9, "k", value)
        assert otlp.attributes(9, {"k": value}) == expected


def test_unique_and_long_texts_encode_like_any_other():
    for key, value in (("gen_ai.response.id", "chatcmpl-1"), ("k", "x" * 200)):
        assert otlp.attributes(9, {key: value}) == otlp.key_value(9, key, value)


def test_tuples_holding_unhashable_values_encode_uncached():
    value = ("stop", ["nested"])
    assert otlp.attributes(9, {"k": value}) == otlp.key_value(9, "k", value)


def test_attribute_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(otlp, "_CACHE_MAX", 8)
    for tokens in range(100):
        assert otlp.attributes(9, {"gen_ai.usage.input_tokens": tokens}) == otlp.key_value(
            9, "gen_ai.usage.input_tokens", tokens
        )
    assert 0 < len(otlp._caches[9][int]) <= 8
