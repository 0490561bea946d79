"""proxy/openai_api.py: which request/response text a policy reads, write-back, error shapes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.openai_api import (
    CHAT,
    COMPLETIONS,
    RESPONSES,
    OpenAIError,
    input_slots,
    output_slots,
    parse_json_body,
    render,
)


def texts(body: dict[str, Any], scope: str, endpoint: str = CHAT) -> list[tuple[str, str]]:
    return [(slot.role, slot.text) for slot in input_slots(body, scope, endpoint)]


CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "tool result"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "this picture"},
            ],
        },
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}

RESPONSES_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "instructions": "answer briefly",
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42 degrees"},
        {"role": "user", "content": "and tomorrow?"},
    ],
}


# --- input_slots per endpoint and scope --------------------------------------------------


def test_chat_last_user_reads_the_text_parts_of_the_last_user_message() -> None:
    assert texts(CHAT_BODY, "last_user") == [("user", "look at"), ("user", "this picture")]


def test_chat_conversation_reads_every_turn_including_tool_results() -> None:
    assert texts(CHAT_BODY, "conversation") == [
        ("system", "be nice"),
        ("user", "first question"),
        ("tool", "tool result"),
        ("assistant", "first answer"),
        ("user", "look at"),
        ("user", "this picture"),
    ]


def test_chat_assistant_scope_reads_only_assistant_turns() -> None:
    assert texts(CHAT_BODY, "assistant") == [("assistant", "first answer")]


def test_no_user_turn_means_nothing_to_read_for_last_user() -> None:
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}
    assert texts(body, "last_user") == []


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("once upon", [("user", "once upon")]),
        (["one", "two"], [("user", "one"), ("user", "two")]),
    ],
)
@pytest.mark.parametrize("scope", ["last_user", "conversation"])
def test_completions_prompt(prompt: Any, expected: list, scope: str) -> None:
    assert texts({"model": "m", "prompt": prompt}, scope, COMPLETIONS) == expected


@pytest.mark.parametrize("prompt", [[15496, 995], [[15496], [995]]])
def test_completions_token_id_prompts_are_refused(prompt: list) -> None:
    with pytest.raises(OpenAIError) as info:
        input_slots({"model": "m", "prompt": prompt}, "last_user", COMPLETIONS)
    assert info.value.status == 400
    assert info.value.param == "prompt"


def test_responses_string_input_with_instructions() -> None:
    body = {"model": "m", "instructions": "be brief", "input": "tell me a joke"}
    assert texts(body, "last_user", RESPONSES) == [("user", "tell me a joke")]
    assert texts(body, "conversation", RESPONSES) == [
        ("system", "be brief"),
        ("user", "tell me a joke"),
    ]


def test_responses_items_per_scope() -> None:
    assert texts(RESPONSES_BODY, "last_user", RESPONSES) == [("user", "and tomorrow?")]
    assert texts(RESPONSES_BODY, "assistant", RESPONSES) == [("assistant", "hello")]
    assert texts(RESPONSES_BODY, "conversation", RESPONSES) == [
        ("system", "answer briefly"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("tool", "42 degrees"),
        ("user", "and tomorrow?"),
    ]


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        # a Responses prompt-template reference does not hide the input
        (RESPONSES, {"prompt": {"id": "pmpt_1"}, "input": "tell me"}, "tell me"),
        (RESPONSES, {"prompt": None, "input": "tell me"}, "tell me"),
        (
            RESPONSES,
            {"messages": [{"role": "user", "content": "x"}], "input": "tell me"},
            "tell me",
        ),
        (COMPLETIONS, {"messages": [], "prompt": "once upon"}, "once upon"),
        (CHAT, {"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}, "hi"),
        (CHAT, {"messages": [{"role": "user", "content": "hi"}], "input": "x"}, "hi"),
    ],
)
def test_each_endpoint_reads_only_its_own_fields(endpoint: str, body: dict, expected: str) -> None:
    assert texts(body, "conversation", endpoint) == [("user", expected)]


# --- render ------------------------------------------------------------------------------


def test_render_single_turn_joins_text_lines() -> None:
    assert render(input_slots(CHAT_BODY, "last_user"), "last_user") == "look at\nthis picture"


def test_render_conversation_labels_roles_and_skips_empty_text() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "tool", "content": "result"},
        ]
    }
    slots = input_slots(body, "conversation")
    assert render(slots, "conversation") == "[user] hi\n\n[tool] result"


def test_render_nothing_is_empty() -> None:
    assert render([], "conversation") == ""
    assert render([], "last_user") == ""


# --- write-back --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "scope", "path"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "a@b.co"}]}, "last_user", ("messages", 0)),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a@b.co"}]}]},
            "last_user",
            ("messages", 0, "content", 0),
        ),
        (COMPLETIONS, {"prompt": ["safe", "a@b.co"]}, "last_user", ("prompt",)),
        (RESPONSES, {"input": "a@b.co", "instructions": "x"}, "last_user", ()),
        (
            RESPONSES,
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "a@b.co"}]},
            "conversation",
            ("input", 0),
        ),
    ],
)
def test_writing_a_slot_changes_the_body(
    endpoint: str, body: dict, scope: str, path: tuple
) -> None:
    for slot in input_slots(body, scope, endpoint):
        slot.text = slot.text.replace("a@b.co", "[REDACTED:EMAIL]")
    serialized = orjson.dumps(body)
    assert b"a@b.co" not in serialized
    assert b"[REDACTED:EMAIL]" in serialized
    node: Any = body
    for step in path:
        node = node[step]
    assert "[REDACTED:EMAIL]" in orjson.dumps(node).decode()


def test_write_back_leaves_everything_else_alone() -> None:
    body = orjson.loads(orjson.dumps(CHAT_BODY))
    for slot in input_slots(body, "last_user"):
        slot.text = slot.text.upper()
    expected = orjson.loads(orjson.dumps(CHAT_BODY))
    expected["messages"][-1]["content"][0]["text"] = "LOOK AT"
    expected["messages"][-1]["content"][2]["text"] = "THIS PICTURE"
    assert body == expected


# --- output_slots ------------------------------------------------------------------------


def output_texts(endpoint: str, body: dict) -> list[list[str]]:
    return [[slot.text for slot in choice] for choice in output_slots(endpoint, body)]


def test_chat_output_per_choice() -> None:
    body = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "answer one"}},
            {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": []}},
            {"index": 2, "message": {"role": "assistant", "content": "answer three"}},
        ]
    }
    assert output_texts(CHAT, body) == [["answer one"], [], ["answer three"]]


def test_completions_output_per_choice() -> None:
    body = {"choices": [{"index": 0, "text": "alpha"}, {"index": 1, "text": "beta"}]}
    assert output_texts(COMPLETIONS, body) == [["alpha"], ["beta"]]


def test_responses_output_per_message_item() -> None:
    body = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "part one"},
                    {"type": "output_text", "text": "part two"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ]
    }
    assert output_texts(RESPONSES, body) == [["part one", "part two"]]


def test_output_write_back_changes_the_response() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "call 555"}}]}
    (slot,) = output_slots(CHAT, body)[0]
    slot.text = "call [REDACTED:PHONE]"
    assert body["choices"][0]["message"]["content"] == "call [REDACTED:PHONE]"


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, RESPONSES])
def test_output_of_an_empty_body(endpoint: str) -> None:
    assert output_slots(endpoint, {}) == []


# --- JSON bodies and errors --------------------------------------------------------------


def test_parse_json_body_returns_the_object() -> None:
    assert parse_json_body(b'{"model": "m", "n": 2}') == {"model": "m", "n": 2}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": ', "could not parse the JSON body"),
        (b"", "could not parse the JSON body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_parse_json_body_errors_are_400_invalid_json(raw: bytes, message: str) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_json_body(raw)
    assert info.value.status == 400
    error = orjson.loads(info.value.body())["error"]
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_openai_error_body_shape() -> None:
    error = OpenAIError(404, "The model 'x' does not exist", code="model_not_found", param="model")
    assert orjson.loads(error.body()) == {
        "error": {
            "message": "The model 'x' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_openai_error_body_carries_extra_fields() -> None:
    extra = {"innererror": {"code": "ResponsibleAIPolicyViolation"}}
    error = OpenAIError(
        503, "guard down", type="server_error", code="guard_unavailable", extra=extra
    )
    body = orjson.loads(error.body())["error"]
    assert body["type"] == "server_error"
    assert body["param"] is None
    assert body["innererror"] == {"code": "ResponsibleAIPolicyViolation"}
