"""Streamed Messages API answers through the gateway's output guard: the official SDK's
stream helpers and the raw SSE bytes a client receives."""

from __future__ import annotations

import anthropic
import httpx
import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.anthropic_support import TOOLS, claude_gateway, sdk, user
from tests.conftest import KEY, audit_records
from tests.test_tracing_e2e import finished_trace

WINDOWED = {
    "output": {
        "policies": ["violence", "pii"],
        "stream": "window",
        "window_chars": 40,
        "overlap_chars": 16,
    }
}
# No detector policy: nothing is held back beyond the window, so cleared text moves early.
VIOLENCE = {"output": {**WINDOWED["output"], "policies": ["violence"]}}


def events(gw, model: str, text: str, **extra) -> list[tuple[str, dict]]:
    """The (event name, data) pairs the client received, read off the wire."""
    body = {"model": model, "max_tokens": 64, "messages": user(text), "stream": True, **extra}
    with httpx.stream(
        "POST", gw.url + "/v1/messages", json=body, headers={"x-api-key": KEY}
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        raw = reply.read()
    found = []
    for chunk in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in chunk.splitlines() if b": " in line)
        if b"event" in lines:
            found.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return found


def released(found: list[tuple[str, dict]], kind: str) -> str:
    field = {"text_delta": "text", "input_json_delta": "partial_json"}.get(kind, "thinking")
    return "".join(
        d["delta"][field]
        for name, d in found
        if name == "content_block_delta" and d["delta"]["type"] == kind
    )


def test_allowed_stream_reaches_the_sdk_whole(make_gateway, messages_upstream):
    exporter = InMemorySpanExporter()
    gw = claude_gateway(
        make_gateway, messages_upstream, options={"span_exporter": exporter}, claude=WINDOWED
    )
    with sdk(gw).messages.stream(
        model="claude-1", max_tokens=64, messages=user("say: a calm and quiet answer")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "a calm and quiet answer" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5 and final.id == "msg_fake_01"
    names = [name for name, _ in events(gw, "claude-1", "hello")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == [
        "message_delta",
        "message_stop",
    ]
    records = audit_records(gw, 2)
    assert records[0]["stream"] is True and records[0]["endpoint"] == "/v1/messages"
    assert records[0]["content"]["output"] == "a calm and quiet answer"
    upstream_span = next(s for s in finished_trace(exporter) if s.name == "chat claude-1")
    assert upstream_span.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert upstream_span.attributes["gen_ai.usage.output_tokens"] == 5


def test_stream_stops_before_flagged_text_with_refusal(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=VIOLENCE)
    said = "say: " + "a long and peaceful preamble " * 3 + "then we kill them all tonight"
    with sdk(gw).messages.stream(model="claude-1", max_tokens=64, messages=user(said)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert text.startswith("a long and peaceful preamble") and "kill" not in text
    found = events(gw, "claude-1", said)
    assert "kill" not in released(found, "text_delta")
    assert [name for name, _ in found[-2:]] == ["message_delta", "message_stop"]
    assert found[-2][1]["delta"]["stop_reason"] == "refusal"
    record = audit_records(gw, 2)[0]
    assert record["decision"] == "block" and record["stream"] is True
    assert "kill them all" in record["content"]["output"]


def test_streamed_tool_use_input_arrives_whole(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=WINDOWED)
    with sdk(gw).messages.stream(
        model="claude-tools", max_tokens=64, tools=TOOLS, messages=user("say: rain in Oslo")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[1].input == {"query": "rain in Oslo"}
    assert audit_records(gw)[0]["content"]["output"].endswith('{"query":"rain in Oslo"}')


def test_flagged_input_json_delta_is_never_released(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=VIOLENCE)
    ask = "say: find where to kill them all"
    with sdk(gw).messages.stream(
        model="claude-tools", max_tokens=64, tools=TOOLS, messages=user(ask)
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert [b.type for b in final.content] in (["text"], ["text", "tool_use"])
    assert all(b.type != "tool_use" or "kill" not in str(b.input) for b in final.content)
    found = events(gw, "claude-tools", ask, tools=TOOLS)
    assert released(found, "text_delta") == "Let me look that up."
    partial = released(found, "input_json_delta")  # the cleared first window went out
    assert partial.startswith('{"query":"find') and "kill" not in partial
    assert found[-2][1]["delta"]["stop_reason"] == "refusal"
    verdicts = audit_records(gw, 2)[0]["verdicts"]
    assert any(v["policy"] == "violence" and v["label"] == "violation" for v in verdicts)


def test_thinking_deltas_are_guarded_when_enabled(make_gateway, messages_upstream):
    output = WINDOWED["output"]
    gw = claude_gateway(
        make_gateway,
        messages_upstream,
        claude={"output": output},
        deep={"output": {**output, "thinking": True}},
    )
    quiet = events(gw, "claude-thinking", "say: kill them all")
    assert released(quiet, "thinking_delta") == "kill them all"
    assert quiet[-2][1]["delta"]["stop_reason"] == "end_turn"
    guarded = events(gw, "deep-thinking", "say: kill them all")
    assert "kill" not in released(guarded, "thinking_delta")
    assert guarded[-2][1]["delta"]["stop_reason"] == "refusal"


def test_streamed_text_is_redacted(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=WINDOWED)
    with sdk(gw).messages.stream(
        model="claude-1", max_tokens=64, messages=user("say: write to jane@example.com today")
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "write to [REDACTED:EMAIL] today"


def test_guard_failure_mid_stream_is_an_error_event_the_sdk_raises(
    make_gateway, messages_upstream, classifier
):
    gw = claude_gateway(make_gateway, messages_upstream, claude=WINDOWED)
    classifier[0].mode = "error500"
    with (
        pytest.raises(anthropic.APIStatusError, match="output guard is unavailable"),
        sdk(gw).messages.stream(
            model="claude-1", max_tokens=64, messages=user("say: anything at all")
        ) as stream,
    ):
        "".join(stream.text_stream)


def test_passthrough_streams_flow_and_are_judged_for_the_record(make_gateway, messages_upstream):
    output = {**VIOLENCE["output"], "stream": "passthrough"}
    gw = claude_gateway(make_gateway, messages_upstream, claude={"output": output})
    found = events(gw, "claude-1", "say: we kill them all")
    assert released(found, "text_delta") == "we kill them all"
    assert found[-2][1]["delta"]["stop_reason"] == "end_turn"
    record = audit_records(gw)[0]
    assert record["decision"] == "annotate" and record["content"]["output"] == "we kill them all"


def test_a_broken_upstream_stream_ends_in_an_error_event_the_sdk_raises(
    make_gateway, messages_upstream
):
    gw = claude_gateway(make_gateway, messages_upstream, claude=VIOLENCE, relay={})
    for model in ("claude-drop", "relay-drop"):  # guarded, and relayed as it comes
        with (
            pytest.raises(anthropic.APIStatusError, match="upstream"),
            sdk(gw).messages.stream(
                model=model, max_tokens=64, messages=user("say: a b c d e f")
            ) as stream,
        ):
            "".join(stream.text_stream)
        found = events(gw, model, "say: a b c d e f")
        assert found[-1][0] == "error" and found[-1][1]["error"]["type"] == "api_error"
    records = audit_records(gw, 4)
    assert [r["error"] for r in records] == ["upstream_dropped"] * 4
