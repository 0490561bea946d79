"""The Messages API's pure pieces: config keys, where request and answer text sits, the
withheld answer, error bodies and stream events."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy import anthropic_sse
from proxy.anthropic_api import error_body
from proxy.config import ConfigError, load_config, parse_config
from proxy.gateway import check_policies
from proxy.guard.engine import scoped
from proxy.openai_api import OpenAIError
from proxy.policies import load_policies
from proxy.surfaces import messages
from proxy.surfaces.text import rewrite
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


def test_every_request_text_is_a_piece_tool_calls_and_results_named():
    pieces = messages.input_pieces(conversation())
    assert [(p.role, p.text(), p.tool) for p in pieces] == [
        ("system", "Be brief.", None),
        ("user", "find cats", None),
        ("assistant", "Searching.", None),
        ("assistant", "cats", "search"),
        ("user", "summarise", None),
        ("tool", "cats are great", "search"),
        ("tools", "Search the web.", None),
    ]
    assert [p.text() for p in scoped(pieces, "last_user")[0]] == ["summarise"]


def test_documents_and_tool_result_blocks_are_read():
    blocks = [
        {"type": "document", "title": "T", "source": {"type": "text", "data": "doc text"}},
        {"type": "document", "source": {"type": "base64", "data": "AAAA"}},
        {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": "r"}]},
    ]
    body = {"messages": [{"role": "user", "content": blocks}]}
    assert [p.text() for p in messages.input_pieces(body)] == ["T\ndoc text", "r"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [7]}]}, "messages[0].content[0]"),
        ({"messages": [], "system": {"text": "x"}}, "system"),
    ],
)
def test_unreadable_requests_are_400_naming_the_field(body, param):
    with pytest.raises(OpenAIError) as err:
        messages.input_pieces(body)
    assert err.value.status == 400 and err.value.param == param


def test_redacting_a_tool_input_rewrites_that_string_only():
    body = conversation()
    tool_call = messages.input_pieces(body)[3]
    [slot] = tool_call.slots
    new = rewrite(body, {slot.path: "[REDACTED:EMAIL]"})
    assert new["messages"][1]["content"][1]["input"] == {"q": "[REDACTED:EMAIL]"}
    assert body["messages"][1]["content"][1]["input"] == {"q": "cats"}  # left as it was


def test_output_pieces_follow_block_indexes_and_thinking_only_when_asked():
    body = {
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "hello"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": ["x", 1]}},
        ]
    }
    plain = messages.output_pieces(body)
    assert [(p.choice, p.text(), p.tool) for p in plain] == [(1, "hello", None), (2, "x", "f")]
    assert messages.output_pieces(body, thinking=True)[0].text() == "hmm"


def test_withhold_cuts_from_the_first_flagged_block():
    body = {
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "stop_reason": "end_turn",
        "stop_sequence": "x",
    }
    assert messages.withhold(body, frozenset({1})) == {
        "content": [{"type": "text", "text": "a"}],
        "stop_reason": "refusal",
        "stop_sequence": None,
    }
    assert body["stop_reason"] == "end_turn"  # a new body; the upstream's stays intact


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
