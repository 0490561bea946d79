"""Span records, W3C trace context parsing and head sampling (pure, no exporter)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from proxy.spans import ERROR, SERVER, Span, parse_traceparent, sampler_from_env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{PARENT}-01", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-00", (int(TRACE, 16), int(PARENT, 16), False)),
        (f"  00-{TRACE}-{PARENT}-03 ", (int(TRACE, 16), int(PARENT, 16), True)),  # flag bit 0
        (f"cc-{TRACE}-{PARENT}-01-future-fields", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # lowercase hex only
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        ("", None),
    ],
)
def test_traceparent(header, expected):
    parsed = parse_traceparent(header)
    assert (parsed[:3] if parsed else None) == expected


def test_tracestate_is_kept_only_when_sane():
    header = f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(header, " a=1,b=2 ")[3] == "a=1,b=2"
    assert parse_traceparent(header, "a=" + "x" * 600)[3] == ""
    assert parse_traceparent(header, "a=1\r\nx: y")[3] == ""


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_ratio_bound_is_the_sdks(monkeypatch, ratio):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", str(ratio))
    parent_based, bound = sampler_from_env(1.0)
    assert not parent_based
    assert bound == TraceIdRatioBased(ratio).bound


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        (None, None, (True, round(0.3 * 2**64))),  # the config's sample_ratio, parent-based
        ("always_on", "0.5", (False, 2**64)),  # the arg means nothing to always_on
        ("always_off", None, (False, 0)),
        ("parentbased_always_off", None, (True, 0)),
        ("parentbased_traceidratio", "0.5", (True, 2**63)),
        ("traceidratio", "bogus", (False, 2**64)),  # unusable arg: 1.0, as the SDK does
        ("traceidratio", "1.5", (False, 2**64)),
        ("jaeger_remote", None, (True, 2**64)),  # unsupported: the SDK's default
    ],
)
def test_sampler_from_env(monkeypatch, sampler, arg, expected):
    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sampler_from_env(0.3) == expected


def test_an_ended_span_no_longer_changes_and_ends_once():
    ended: list[Span] = []
    span = Span("GET /v1/models", SERVER, 1, 0, False, "", {"a": 1}, ended.append)
    span.end()
    span.set_attribute("a", 2)
    span.set_attributes({"b": 3})
    span.add_event("late")
    span.set_status(ERROR, "late")
    span.end()
    assert ended == [span]
    assert span.attributes == {"a": 1} and span.events == [] and span.status_code == 0
    assert not span.is_recording()
    assert span.traceparent() == f"00-{1:032x}-{span.span_id:016x}-01"
