"""Chat Completions: text in `messages` (every role, parts, names, tool calls), `tools`
and `response_format` descriptions; answers per choice, tool calls each on their own."""

from __future__ import annotations

from typing import Any

from proxy.surfaces.text import (
    Piece,
    Slot,
    as_list,
    as_object,
    descriptions,
    texts,
    tool_defs,
    wrong_type,
)

ENDPOINT = "/v1/chat/completions"
PROMPT_PARAM = "messages"
# Keys of a message (and of what it nests) that carry text the model reads.
MESSAGE_KEYS = frozenset(
    ("content", "text", "refusal", "output", "name", "tool_calls", "function_call", "function",
     "arguments", "custom", "input")
)  # fmt: skip
CONTENT_KEYS = frozenset(("content", "text", "refusal"))


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
    pieces += tool_defs(as_list(body, "tools"), "tools")
    pieces += tool_defs(as_list(body, "functions"), "functions")
    prediction = body.get("prediction")  # Predicted Outputs: text the model reads too
    if isinstance(prediction, dict):
        slots = texts(prediction, ("prediction",), CONTENT_KEYS)
        if slots:
            pieces.append(Piece("user", tuple(slots)))
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        slots = descriptions(response_format, ("response_format",))
        if slots:
            pieces.append(Piece("tools", tuple(slots)))
    return pieces


def output_pieces(body: dict[str, Any]) -> list[Piece]:
    """Per choice: its content and refusal as one piece, each tool call as another."""
    pieces = []
    choices = body.get("choices")
    for index, choice in enumerate(choices if isinstance(choices, list) else ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        where = ("choices", index, "message")
        content, calls = message.get("content"), message.get("tool_calls")
        if type(content) is str and not calls and not message.get("refusal"):
            slots = (Slot((*where, "content"), content),)
        else:
            slots = tuple(texts(message, where, CONTENT_KEYS, False))
        pieces.append(Piece("assistant", slots, choice=index))
        for n, call in enumerate(calls if isinstance(calls, list) else ()):
            kind = _call_kind(call)  # a function call, or a custom tool's free-form input
            if kind is not None:
                pieces.append(_call(call[kind], (*where, "tool_calls", n, kind), index))
        if isinstance(message.get("function_call"), dict):
            pieces.append(_call(message["function_call"], (*where, "function_call"), index))
    return pieces


def _call_kind(call: Any) -> str | None:
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
    """The flagged choices' text and tool calls removed, finishing with content_filter."""
    if not choices:
        return body
    out = dict(body, choices=list(body["choices"]))
    for index in choices:
        choice = dict(out["choices"][index], finish_reason="content_filter")
        message = choice.get("message")
        if isinstance(message, dict):
            message = {k: v for k, v in message.items() if k not in ("tool_calls", "function_call")}
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
            dict(c, content_filter_results=per_choice.get(i, {})) if isinstance(c, dict) else c
            for i, c in enumerate(choices)
        ]
    return out
