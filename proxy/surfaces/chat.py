"""Chat Completions: text in `messages` (every role, parts, names, tool calls, reasoning
sent back), `tools` and `response_format` descriptions, and the fields self-hosted servers
(vLLM, SGLang) render into the prompt: `documents`, `chat_template_kwargs`. Fields that
replace the text the guard reads (token ids, embeddings, a client's own chat template)
are refused. Answers per choice: content, refusal and audio transcript as one piece, each
tool call on its own, reasoning when the route guards it."""

from __future__ import annotations

from typing import Any

from proxy.openai_api import bad_request
from proxy.surfaces.text import (
    Piece,
    Slot,
    as_list,
    as_object,
    descriptions,
    leaves,
    texts,
    tool_defs,
    wrong_type,
)

ENDPOINT = "/v1/chat/completions"
PROMPT_PARAM = "messages"
# Keys of a message (and of what it nests) that carry text the model reads.
# `thinking` parts and `reasoning_content`/`reasoning` of earlier turns: templates that
# keep reasoning render it into the prompt.
MESSAGE_KEYS = frozenset(
    ("content", "text", "refusal", "output", "name", "tool_calls", "function_call", "function",
     "arguments", "custom", "input", "thinking", "reasoning_content", "reasoning")
)  # fmt: skip
CONTENT_KEYS = frozenset(("content", "text", "refusal"))
# An answer's text: content, refusal and a spoken answer's transcript (`audio.transcript`).
ANSWER_KEYS = CONTENT_KEYS | {"audio", "transcript"}
# A model's reasoning as self-hosted servers and routers send it: vLLM/SGLang/DeepSeek
# `reasoning_content`, vLLM/OpenRouter `reasoning`, OpenRouter `reasoning_details` parts.
REASONING_KEYS = frozenset(("reasoning_content", "reasoning", "reasoning_details", "text",
                            "summary"))  # fmt: skip
# Withheld with a flagged choice (besides its content): everything else the model wrote.
WITHHELD = frozenset(("tool_calls", "function_call", "audio", "reasoning_content", "reasoning",
                      "reasoning_details"))  # fmt: skip
# Prompts that are not text, or a template that turns the text read into other text: a
# guarded route cannot classify what the model would read, so it refuses them.
UNREADABLE = ("chat_template", "input_ids", "prompt_token_ids", "prompt_embeds", "input_embeds")


def input_pieces(body: dict[str, Any]) -> list[Piece]:
    pieces = []
    for index, message in enumerate(as_list(body, "messages", required=True)):
        if type(message) is dict and len(message) == 2:  # the common {role, content: str}
            role, content = message.get("role"), message.get("content")
            if type(role) is str and type(content) is str:
                pieces.append(Piece(role, (Slot(("messages", index, "content"), content),)))
                continue
        where = ("messages", index)
        message = as_object(message, where)
        role = message.get("role", "user")
        if not isinstance(role, str):
            raise wrong_type((*where, "role"), role, "a string")
        slots = texts(message, where, MESSAGE_KEYS)
        pieces.append(Piece(role, tuple(slots)))
        if isinstance(message.get("tools"), list):  # SGLang: tools on a system message
            tools = descriptions(message["tools"], (*where, "tools"))
            if tools:
                pieces.append(Piece("tools", tuple(tools)))
    refuse_unreadable(body, UNREADABLE)
    pieces += tool_defs(as_list(body, "tools"), "tools")
    pieces += tool_defs(as_list(body, "functions"), "functions")
    pieces += _extensions(body)
    prediction = body.get("prediction")  # Predicted Outputs: text the model reads too
    if isinstance(prediction, dict):
        slots = texts(prediction, ("prediction",), CONTENT_KEYS)
        if slots:
            pieces.append(Piece("user", tuple(slots)))
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        slots = descriptions(response_format, ("response_format",))
        schema = response_format.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("name"), str):
            slots.insert(0, Slot(("response_format", "json_schema", "name"), schema["name"]))
        if slots:
            pieces.append(Piece("tools", tuple(slots)))
    return pieces


def refuse_unreadable(body: dict[str, Any], names: tuple[str, ...]) -> None:
    """400 naming the first field set whose prompt the guard cannot read as text."""
    for name in names:
        if body.get(name) is not None:
            raise bad_request(
                f"A guarded route reads the prompt as text: '{name}' is not accepted here.",
                "unsupported_parameter",
                name,
            )


def _extensions(body: dict[str, Any]) -> list[Piece]:
    """vLLM's `documents` (RAG documents the chat template puts into the prompt) and the
    string values of `chat_template_kwargs` (a template may render any of them)."""
    pieces = []
    documents = body.get("documents")
    if documents is not None:
        where = ("documents",)
        for index, document in enumerate(as_list(body, "documents")):
            slots = leaves(document, (*where, index))
            if slots:
                pieces.append(Piece("tool", tuple(slots)))
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        slots = leaves(as_object(kwargs, ("chat_template_kwargs",)), ("chat_template_kwargs",))
        if slots:
            pieces.append(Piece("system", tuple(slots)))
    return pieces


def output_pieces(body: dict[str, Any], thinking: bool = False) -> list[Piece]:
    """Per choice: its content, refusal and audio transcript as one piece, each tool call
    as another, and its reasoning (`reasoning_content`, `reasoning`, `reasoning_details`)
    as another when the route guards reasoning (`output.thinking`)."""
    pieces = []
    choices = body.get("choices")
    for index, choice in enumerate(choices if isinstance(choices, list) else ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        where = ("choices", index, "message")
        content, calls = message.get("content"), message.get("tool_calls")
        if (
            type(content) is str
            and not calls
            and not message.get("refusal")
            and ("audio" not in message)
        ):
            slots = (Slot((*where, "content"), content),)
        else:
            slots = tuple(texts(message, where, ANSWER_KEYS, False))
        pieces.append(Piece("assistant", slots, choice=index))
        if thinking and not REASONING_KEYS.isdisjoint(message):
            reasoning = tuple(texts(message, where, REASONING_KEYS, False))
            if reasoning:
                pieces.append(Piece("assistant", reasoning, choice=index))
        for n, call in enumerate(calls if isinstance(calls, list) else ()):
            kind = call_kind(call)
            if kind is not None:
                pieces.append(_call(call[kind], (*where, "tool_calls", n, kind), index))
        if isinstance(message.get("function_call"), dict):
            pieces.append(_call(message["function_call"], (*where, "function_call"), index))
    return pieces


def call_kind(call: Any) -> str | None:
    """Which member of a tool call (whole or streamed) carries it: a function, or a custom
    tool's free-form input."""
    if isinstance(call, dict):
        for kind in ("function", "custom"):
            if isinstance(call.get(kind), dict):
                return kind
    return None


def _call(function: dict[str, Any], where: tuple[str | int, ...], choice: int) -> Piece:
    name = function.get("name")
    slots = texts(function, where, frozenset(("arguments", "input")), False)
    return Piece(
        "assistant", tuple(slots), tool=name if isinstance(name, str) else "", choice=choice
    )


def withhold(body: dict[str, Any], choices: frozenset[int]) -> dict[str, Any]:
    """The flagged choices' text, tool calls, audio and reasoning removed, finishing with
    content_filter."""
    if not choices:
        return body
    out = dict(body, choices=list(body["choices"]))
    for index in choices:
        choice = dict(out["choices"][index], finish_reason="content_filter")
        if choice.get("logprobs") is not None:  # its tokens are the withheld text
            choice["logprobs"] = None
        message = choice.get("message")
        if isinstance(message, dict):
            message = {k: v for k, v in message.items() if k not in WITHHELD}
            message["content"] = None
            if "refusal" in message:
                message["refusal"] = None
            choice["message"] = message
        out["choices"][index] = choice
    return out


def annotate(
    body: dict[str, Any], prompt: dict[str, Any] | None, per_choice: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Azure-style filter results: prompt_filter_results and per-choice
    content_filter_results."""
    out = dict(body)
    if prompt is not None:
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": prompt}]
    choices = body.get("choices")
    if per_choice and isinstance(choices, list):
        out["choices"] = [
            _filtered(c, per_choice.get(i, {})) if isinstance(c, dict) else c
            for i, c in enumerate(choices)
        ]
    return out


def _filtered(choice: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """A choice with its filter results; a redacted choice loses its `logprobs`, whose
    tokens would spell out the text the redaction replaced."""
    out = dict(choice, content_filter_results=results)
    if out.get("logprobs") is not None and any(r.get("redacted") for r in results.values()):
        out["logprobs"] = None
    return out
