"""proxy/surfaces/: where each API's text lives (every placement a client or model can use),
what a policy of each scope reads, rewriting, withholding and annotating, all pure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.guard.engine import scoped
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES, OpenAIError
from proxy.surfaces import chat, completions, responses, surface_for
from proxy.surfaces.text import Piece, Slot, render, rewrite


def texts(body: dict[str, Any], scope: str, endpoint: str = CHAT) -> list[tuple[str, str]]:
    pieces = surface_for(endpoint).input_pieces(body)
    return [(p.role, s.text) for unit in scoped(pieces, scope) for p in unit for s in p.slots]


def all_text(body: dict[str, Any], endpoint: str = CHAT) -> list[str]:
    return [text for _, text in texts(body, "per_message", endpoint)]


CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
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
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"q": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42 degrees"},
        {"role": "user", "content": "and tomorrow?"},
    ],
}


# --- scopes ------------------------------------------------------------------------------


def test_chat_last_user_reads_the_text_parts_of_the_last_user_message() -> None:
    assert texts(CHAT_BODY, "last_user") == [("user", "look at"), ("user", "this picture")]


def test_chat_conversation_reads_every_turn_including_tool_calls_and_results() -> None:
    assert texts(CHAT_BODY, "conversation") == [
        ("system", "be nice"),
        ("user", "first question"),
        ("assistant", "f"),
        ("assistant", "{}"),
        ("tool", "tool result"),
        ("assistant", "first answer"),
        ("user", "look at"),
        ("user", "this picture"),
    ]


def test_per_message_is_one_unit_per_message() -> None:
    pieces = chat.input_pieces(CHAT_BODY)
    units = scoped(pieces, "per_message")
    assert [render(u, False) for u in units] == [
        "be nice",
        "first question",
        "f\n{}",
        "tool result",
        "first answer",
        "look at\nthis picture",
    ]


def test_chat_assistant_scope_reads_only_assistant_turns() -> None:
    assert texts(CHAT_BODY, "assistant") == [
        ("assistant", "f"),
        ("assistant", "{}"),
        ("assistant", "first answer"),
    ]


def test_no_user_turn_means_nothing_to_read_for_last_user() -> None:
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}
    assert texts(body, "last_user") == []


def test_the_default_scope_reads_everything_conversation_reads() -> None:
    for body, endpoint in ((CHAT_BODY, CHAT), (RESPONSES_BODY, RESPONSES)):
        assert sorted(texts(body, "per_message", endpoint)) == sorted(
            texts(body, "conversation", endpoint)
        )


# --- input placements: no field is a bypass -------------------------------------------------

SECRET = "SECRET-WORDS"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": role, "content": SECRET}]}
        for role in ("system", "developer", "user", "assistant", "tool", "function")
    ]
    + [
        {"messages": [{"role": "user", "content": [{"type": kind, "text": SECRET}]}]}
        for kind in ("text", "input_text", "output_text")
    ]
    + [
        {"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": SECRET}]}]},
        {"messages": [{"role": "assistant", "content": None, "refusal": SECRET}]},
        {"messages": [{"role": "user", "name": SECRET, "content": "hi"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": SECRET}}],
                }
            ]
        },
        {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": SECRET}}]},
        {
            "messages": [],
            "tools": [{"type": "function", "function": {"name": "f", "description": SECRET}}],
        },
        {
            "messages": [],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"x": {"type": "string", "description": SECRET}},
                        },
                    },
                }
            ],
        },
        {"messages": [], "functions": [{"name": "f", "description": SECRET}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "1", "type": "custom", "custom": {"name": "sh", "input": SECRET}}
                    ],
                }
            ]
        },
        {"messages": [], "prediction": {"type": "content", "content": SECRET}},
        {"messages": [], "prediction": {"type": "content", "content": [{"text": SECRET}]}},
    ],
)
def test_chat_text_in_every_placement_is_read(body: dict) -> None:
    assert SECRET in all_text(body)


@pytest.mark.parametrize(
    "body",
    [
        {"instructions": SECRET, "input": "hi"},
        {"input": SECRET},
        {"input": [{"role": "developer", "content": SECRET}]},
        {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                   "text": SECRET}]}]},
        {"input": [{"type": "function_call_output", "call_id": "c", "output": SECRET}]},
        {"input": [{"type": "function_call_output", "call_id": "c",
                    "output": [{"type": "input_text", "text": SECRET}]}]},
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": SECRET}]},
        {"input": [{"type": "custom_tool_call", "call_id": "c", "name": "f", "input": SECRET}]},
        {"input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": SECRET}]}]},
        {"input": "hi", "tools": [{"type": "function", "name": "f", "description": SECRET}]},
        {"input": "hi", "prompt": {"id": "p", "variables": {"city": SECRET}}},
        {"input": "hi", "prompt": {"id": "p", "variables": {"c": {"type": "input_text",
                                                                   "text": SECRET}}}},
    ],
)  # fmt: skip
def test_responses_text_in_every_placement_is_read(body: dict) -> None:
    assert SECRET in all_text(body, RESPONSES)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "once upon"}, ["once upon"]),
        ({"prompt": ["one", "two"]}, ["one", "two"]),
        ({"prompt": "p", "suffix": "the end"}, ["p", "the end"]),
    ],
)
def test_completions_prompt_and_suffix(body: dict, expected: list) -> None:
    assert all_text(body, COMPLETIONS) == expected


@pytest.mark.parametrize("prompt", [[15496, 995], [[15496], [995]]])
def test_completions_token_id_prompts_are_refused(prompt: list) -> None:
    with pytest.raises(OpenAIError) as info:
        completions.input_pieces({"model": "m", "prompt": prompt})
    assert info.value.status == 400
    assert info.value.param == "prompt"


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (RESPONSES, {"prompt": {"id": "pmpt_1"}, "input": "tell me"}, "tell me"),
        (RESPONSES, {"prompt": None, "input": "tell me"}, "tell me"),
        (RESPONSES, {"messages": [{"role": "user", "content": "x"}], "input": "tell me"},
         "tell me"),
        (COMPLETIONS, {"messages": [], "prompt": "once upon"}, "once upon"),
        (CHAT, {"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}, "hi"),
        (CHAT, {"messages": [{"role": "user", "content": "hi"}], "input": "x"}, "hi"),
    ],
)  # fmt: skip
def test_each_endpoint_reads_only_its_own_fields(endpoint: str, body: dict, expected: str) -> None:
    assert texts(body, "conversation", endpoint) == [("user", expected)]


# --- bodies the gateway cannot read are 400s naming the field ------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (CHAT, {"messages": 5}, "messages"),
        (CHAT, {}, "messages"),
        (CHAT, {"messages": [5]}, "messages[0]"),
        (CHAT, {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (CHAT, {"messages": [{"role": "user", "content": [True]}]}, "messages[0].content[0]"),
        (CHAT, {"messages": [], "tools": {"a": 1}}, "tools"),
        (CHAT, {"messages": [], "tools": [3]}, "tools[0]"),
        (RESPONSES, {"input": 5}, "input"),
        (RESPONSES, {"input": [None]}, "input[0]"),
        (RESPONSES, {"instructions": {"a": "b"}}, "instructions"),
        (COMPLETIONS, {"prompt": {"a": 1}}, "prompt"),
        (COMPLETIONS, {"prompt": "x", "suffix": 3}, "suffix"),
    ],
)
def test_wrong_types_are_400_invalid_type(endpoint: str, body: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as info:
        surface_for(endpoint).input_pieces(body)
    assert info.value.status == 400
    assert info.value.param == param


def test_deep_nesting_is_read_without_recursion() -> None:
    content: Any = SECRET
    for _ in range(5000):
        content = [content]
    assert SECRET in all_text({"messages": [{"role": "user", "content": content}]})


# --- render and rewrite --------------------------------------------------------------------


def test_render_conversation_labels_roles_and_skips_empty_text() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "tool", "content": "result"},
        ]
    }
    assert render(chat.input_pieces(body), True) == "[user] hi\n\n[tool] result"
    assert render([], True) == render([], False) == ""


def test_render_applies_edits() -> None:
    piece = Piece("user", (Slot(("a",), "x a@b.co"), Slot(("b",), "y")))
    assert render([piece], False, {("a",): "x [R]"}) == "x [R]\ny"


def test_rewrite_makes_a_new_body_and_leaves_the_original_alone() -> None:
    body = orjson.loads(orjson.dumps(CHAT_BODY))
    original = orjson.dumps(body)
    edits = {("messages", 5, "content", 0, "text"): "LOOK AT", ("messages", 0, "content"): "S"}
    new = rewrite(body, edits)
    assert orjson.dumps(body) == original
    assert new["messages"][5]["content"][0]["text"] == "LOOK AT"
    assert new["messages"][0]["content"] == "S"
    assert new["messages"][1] is body["messages"][1]  # untouched parts are shared
    assert new["tools"] is body["tools"]
    assert rewrite(body, {}) is body


# --- output ----------------------------------------------------------------------------------


def out(
    endpoint: str, body: dict, thinking: bool = False
) -> list[tuple[int | None, str | None, list[str]]]:
    return [
        (p.choice, p.tool, [s.text for s in p.slots])
        for p in surface_for(endpoint).output_pieces(body, thinking)
    ]


def test_chat_output_per_choice_with_tool_calls_and_refusal() -> None:
    body = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "answer one"}},
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "a", "function": {"name": "search", "arguments": '{"q":1}'}},
                        {"id": "b", "function": {"name": "mail", "arguments": '{"to":2}'}},
                    ],
                },
            },
            {"index": 2, "message": {"role": "assistant", "refusal": "no"}},
            {"index": 3, "message": {"function_call": {"name": "old", "arguments": "{}"}}},
        ]
    }
    assert out(CHAT, body) == [
        (0, None, ["answer one"]),
        (1, None, []),
        (1, "search", ['{"q":1}']),
        (1, "mail", ['{"to":2}']),
        (2, None, ["no"]),
        (3, None, []),
        (3, "old", ["{}"]),
    ]


def test_completions_output_per_choice() -> None:
    body = {"choices": [{"index": 0, "text": "alpha"}, {"index": 1, "text": "beta"}]}
    assert out(COMPLETIONS, body) == [(0, None, ["alpha"]), (1, None, ["beta"])]


def test_responses_output_per_item_with_text() -> None:
    body = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "part one"},
                    {"type": "refusal", "refusal": "part two"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": '{"x": 1}'},
            {"type": "web_search_call", "id": "ws"},
        ]
    }
    assert out(RESPONSES, body) == [  # reasoning only when the route guards it
        (1, None, ["part one", "part two"]),
        (2, "f", ['{"x": 1}']),
    ]
    assert out(RESPONSES, body, thinking=True)[0] == (0, None, ["thinking"])


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, RESPONSES])
@pytest.mark.parametrize("body", [{}, {"choices": 5, "output": "x"}, {"choices": [None, 1]}])
def test_output_of_an_odd_body_is_nothing(endpoint: str, body: dict) -> None:
    assert out(endpoint, body) == []


def test_chat_withhold_removes_text_and_tool_calls_of_those_choices_only() -> None:
    body = {
        "choices": [
            {"message": {"content": "ok"}, "finish_reason": "stop"},
            {
                "message": {"content": None, "tool_calls": [{"id": "a"}], "refusal": "r"},
                "finish_reason": "tool_calls",
            },
        ]
    }
    new = chat.withhold(body, frozenset({1}))
    assert new["choices"][0] == body["choices"][0]
    assert new["choices"][1] == {
        "message": {"content": None, "refusal": None},
        "finish_reason": "content_filter",
    }
    assert body["choices"][1]["message"]["tool_calls"] == [{"id": "a"}]  # original untouched


def test_responses_withhold_marks_the_response_incomplete() -> None:
    body = {
        "status": "completed",
        "output_text": "leak",
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "t"}]},
            {"type": "function_call", "name": "f", "arguments": "bad"},
        ],
    }
    new = responses.withhold(body, frozenset({2}))
    assert new["output"] == [{"type": "reasoning", "summary": []}]
    assert new["status"] == "incomplete"
    assert new["incomplete_details"] == {"reason": "content_filter"}
    assert "output_text" not in new


def test_chat_annotate_per_choice() -> None:
    body = {"choices": [{"index": 0}, {"index": 1}]}
    new = chat.annotate(body, {"p": {"filtered": False}}, {1: {"p": {"filtered": True}}})
    assert new["prompt_filter_results"] == [
        {"prompt_index": 0, "content_filter_results": {"p": {"filtered": False}}}
    ]
    assert new["choices"][0]["content_filter_results"] == {}
    assert new["choices"][1]["content_filter_results"] == {"p": {"filtered": True}}
    assert "prompt_filter_results" not in body


def test_chat_output_reads_a_custom_tool_calls_input_named_after_its_tool() -> None:
    call = {"id": "1", "type": "custom", "custom": {"name": "sh", "input": "rm -rf /"}}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}}]}
    pieces = chat.output_pieces(body)
    assert [(p.tool, [s.text for s in p.slots]) for p in pieces if p.tool] == [("sh", ["rm -rf /"])]


def test_chat_output_reads_audio_always_and_reasoning_when_asked() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "audio": {"id": "a", "data": "AAAA", "transcript": "spoken"},
        "reasoning_content": "thought",
        "reasoning_details": [{"type": "reasoning.summary", "summary": "sum"}],
    }
    body = {"choices": [{"index": 0, "message": message}]}
    assert out(CHAT, body) == [(0, None, ["spoken"])]
    assert out(CHAT, body, thinking=True) == [
        (0, None, ["spoken"]),
        (0, None, ["thought", "sum"]),
    ]
    withheld = chat.withhold(body, frozenset({0}))["choices"][0]["message"]
    assert withheld == {"role": "assistant", "content": None}


def test_messages_server_tool_results_are_read_both_ways() -> None:
    messages = surface_for("/v1/messages")
    fetched = {"type": "document", "title": "page",
               "source": {"type": "text", "media_type": "text/plain", "data": "FETCHED TEXT"}}
    pdf = {"type": "document", "source": {"type": "base64", "data": "JVBERi0x"}}
    history = [
        {"type": "web_fetch_tool_result", "tool_use_id": "s1",
         "content": {"type": "web_fetch_result", "url": "https://x", "content": fetched}},
        {"type": "web_fetch_tool_result", "tool_use_id": "s2",
         "content": {"type": "web_fetch_result", "url": "https://y", "content": pdf}},
        {"type": "bash_code_execution_tool_result", "tool_use_id": "s3",
         "content": {"type": "bash_code_execution_result", "stdout": "STDOUT", "stderr": "ERR"}},
    ]  # fmt: skip
    body = {"messages": [{"role": "assistant", "content": history}]}
    read = [s.text for p in messages.input_pieces(body) for s in p.slots]
    assert {"FETCHED TEXT", "STDOUT", "ERR"} <= set(read) and "JVBERi0x" not in read
    answer = {"content": [
        {"type": "text", "text": "hi"},
        {"type": "mcp_tool_result", "tool_use_id": "m1",
         "content": [{"type": "text", "text": "MCP OUTPUT"}]},
    ]}  # fmt: skip
    (_, result) = messages.output_pieces(answer)
    assert (result.choice, result.text()) == (1, "MCP OUTPUT")


def test_messages_blocks_of_an_unknown_type_are_read_for_their_text() -> None:
    messages = surface_for("/v1/messages")
    block = {"type": "some_future_block", "content": [{"type": "text", "text": "NEW TEXT"}]}
    image = {"type": "image", "source": {"type": "base64", "data": "iVBORw0"}}
    body = {"messages": [{"role": "user", "content": [block, image]}]}
    read = [s.text for p in messages.input_pieces(body) for s in p.slots]
    assert read == ["NEW TEXT"]
