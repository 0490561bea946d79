"""The Messages API's pure pieces: config keys, where request and answer text sits, the
withheld answer, error bodies and stream events."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy import anthropic_sse
from proxy.anthropic_api import error_body, input_slots, output_slots, withhold
from proxy.config import ConfigError, load_config, parse_config
from proxy.gateway import check_policies
from proxy.openai_api import OpenAIError, render
from proxy.policies import load_policies
from tests.test_config import MINIMAL, config_with


def test_upstream_api_defaults_to_openai_and_is_checked():
    assert parse_config(MINIMAL).upstreams["main"].api == "openai"
    assert parse_config(config_with("upstreams.main.api", "anthropic")).upstreams["main"].api == (
        "anthropic"
    )
    with pytest.raises(ConfigError, match=r"^upstreams\.main\.api: must be one of openai"):
        parse_config(config_with("upstreams.main.api", "grpc"))


def test_thinking_is_an_output_key_off_by_default():
    assert parse_config(MINIMAL).routes["open"].output.thinking is False
    on = parse_config(config_with("routes.open.output", {"thinking": True}))
    assert on.routes["open"].output.thinking is True
    with pytest.raises(ConfigError, match=r"^routes\.open\.input\.thinking: unknown key"):
        parse_config(config_with("routes.open.input", {"thinking": True}))


def conversation() -> dict:
    return {
        "tools": [{"name": "search", "description": "Search the web.", "input_schema": {}}],
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "find cats"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Searching."},
                    {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "cats"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "cats are great"},
                    {"type": "text", "text": "summarise"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                ],
            },
        ],
    }


def test_scopes_read_the_places_a_policy_asks_for():
    body = conversation()
    assert render(input_slots(body, "last_user"), "last_user") == "cats are great\nsummarise"
    assert render(input_slots(body, "assistant"), "last_user") == 'Searching.\n{"q":"cats"}'
    assert render(input_slots(body, "conversation"), "conversation") == "\n\n".join(
        [
            "[tools] Search the web.",
            "[system] Be brief.",
            "[user] find cats",
            "[assistant] Searching.",
            '[assistant] {"q":"cats"}',
            "[tool] cats are great",
            "[user] summarise",
        ]
    )


def test_redacting_a_tool_input_writes_json_back_or_drops_it():
    body = conversation()
    [_, tool_input] = input_slots(body, "assistant")
    tool_input.text = '{"q": "[REDACTED:EMAIL]"}'
    assert body["messages"][1]["content"][1]["input"] == {"q": "[REDACTED:EMAIL]"}
    tool_input.text = '{"q": "broken'
    assert body["messages"][1]["content"][1]["input"] == {}


def test_output_slots_follow_block_indexes_and_thinking_only_when_asked():
    body = {
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "hello"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        ]
    }
    assert [[s.text for s in b] for b in output_slots(body)] == [[], ["hello"], ['{"a":1}']]
    assert output_slots(body, thinking=True)[0][0].text == "hmm"


def test_withhold_cuts_from_the_first_flagged_block():
    body = {
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "stop_reason": "end_turn",
        "stop_sequence": "x",
    }
    withhold(body, set())
    assert body["stop_reason"] == "end_turn"
    withhold(body, {1})
    assert body == {
        "content": [{"type": "text", "text": "a"}],
        "stop_reason": "refusal",
        "stop_sequence": None,
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
    ],
)
def test_error_bodies_use_anthropic_types(status, kind):
    body = orjson.loads(error_body(OpenAIError(status, "nope", code="c"), "req_1"))
    assert body == {
        "type": "error",
        "error": {"type": kind, "message": "nope", "code": "c"},
        "request_id": "req_1",
    }


def delta(kind: str, key: str, value: str, index: int = 0) -> dict:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: value}}


def test_stream_texts_are_keyed_by_block_index():
    assert anthropic_sse.texts(delta("text_delta", "text", "hi", 2)) == {2: "hi"}
    assert anthropic_sse.texts(delta("input_json_delta", "partial_json", '{"a', 1)) == {1: '{"a'}
    thinking = delta("thinking_delta", "thinking", "hmm")
    assert anthropic_sse.texts(thinking) == {}
    assert anthropic_sse.texts(thinking, thinking=True) == {0: "hmm"}
    assert anthropic_sse.texts(delta("signature_delta", "signature", "s"), thinking=True) == {}
    assert anthropic_sse.texts({"type": "ping"}) == {}


def test_observe_keeps_the_message_and_grows_usage():
    start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 7}}}
    message, usage, reason = anthropic_sse.observe(start, None)
    assert reason is None
    assert message is not None and message["id"] == "m" and usage == {"input_tokens": 7}
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 3},
    }
    assert anthropic_sse.observe(end, usage) == (
        None,
        {"input_tokens": 7, "output_tokens": 3},
        "end_turn",
    )


def test_a_stopped_stream_ends_with_refusal_then_message_stop():
    frames = anthropic_sse.end_frames().split(b"\n\n")
    assert frames[0].startswith(b"event: message_delta\ndata: ")
    assert orjson.loads(frames[0].split(b"data: ")[1])["delta"]["stop_reason"] == "refusal"
    assert frames[1] == b'event: message_stop\ndata: {"type":"message_stop"}'


def test_shipped_anthropic_example_config_checks():
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "examples" / "configs" / "anthropic.yaml", env={})
    assert config.upstreams["claude"].api == "anthropic"
    assert config.upstreams["claude"].base_url == "https://api.anthropic.com/v1"
    check_policies(config, load_policies(root / "policies"))
