"""Responses API: text in `instructions`, `input` (a string or items of every kind:
messages and their parts, function calls and their outputs, reasoning summaries),
`tools` descriptions, `prompt` variables and the structured-output format (`text.format`:
its name and every description in its schema); answers per output item."""

from __future__ import annotations

from typing import Any

from proxy.surfaces.text import (
    Piece,
    Slot,
    as_object,
    descriptions,
    texts,
    tool_defs,
    wrong_type,
)

ENDPOINT = "/v1/responses"
PROMPT_PARAM = "input"
ITEM_KEYS = frozenset(
    ("content", "text", "refusal", "output", "arguments", "input", "summary", "name")
)
# Answers also carry what hosted tools were asked and did: a code interpreter's `code` and
# `outputs[].logs`, a web search's `action.query`/`queries`/`pattern`, a computer's typed
# `action.text`, shell `action.command`/`commands`.
OUTPUT_KEYS = (ITEM_KEYS - {"name"}) | {
    "code", "outputs", "logs", "action", "query", "queries", "pattern", "command", "commands"
}  # fmt: skip
ROLE_OF = {
    "function_call_output": "tool",
    "custom_tool_call_output": "tool",
    "function_call": "assistant",
    "custom_tool_call": "assistant",
    "reasoning": "assistant",
}


def _items(value: Any, key: str, default_role: str) -> list[Piece]:
    if isinstance(value, str):
        return [Piece(default_role, (Slot((key,), value),))]
    if value is None:
        return []
    if not isinstance(value, list):
        raise wrong_type((key,), value, "a string or an array")
    pieces = []
    for index, item in enumerate(value):
        where = (key, index)
        item = as_object(item, where)
        kind = item.get("type")
        role = item.get("role", ROLE_OF.get(kind if isinstance(kind, str) else "", default_role))
        if not isinstance(role, str):
            raise wrong_type((*where, "role"), role, "a string")
        pieces.append(Piece(role, tuple(texts(item, where, ITEM_KEYS))))
    return pieces


def input_pieces(body: dict[str, Any]) -> list[Piece]:
    pieces = _items(body.get("instructions"), "instructions", "system")
    pieces += _items(body.get("input"), "input", "user")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise wrong_type(("tools",), tools, "an array")
        pieces += tool_defs(tools, "tools")
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        where = ("prompt", "variables")
        slots = texts(variables, where, frozenset((*variables, "text")), strict=False)
        if slots:
            pieces.append(Piece("user", tuple(slots)))
    text = body.get("text")
    form = text.get("format") if isinstance(text, dict) else None
    if isinstance(form, dict):
        where = ("text", "format")
        slots = descriptions(form, where)
        if isinstance(form.get("name"), str):
            slots.insert(0, Slot((*where, "name"), form["name"]))
        if slots:
            pieces.append(Piece("tools", tuple(slots)))
    return pieces


def output_pieces(body: dict[str, Any], thinking: bool = False) -> list[Piece]:
    """One piece per output item with text: messages, tool calls (named) with what their
    tools did (code and its logs, search queries, MCP output), and reasoning items (summary
    and reasoning text) when the route guards reasoning (`output.thinking`)."""
    pieces = []
    items = body.get("output")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "reasoning" and not thinking:
            continue
        slots = texts(item, ("output", index), OUTPUT_KEYS, False)
        if not slots:
            continue
        name = item.get("name") if kind != "message" else None
        tool = name if isinstance(name, str) else None
        pieces.append(Piece("assistant", tuple(slots), tool=tool, choice=index))
    return pieces


def withhold(body: dict[str, Any], choices: frozenset[int]) -> dict[str, Any]:
    """Flagged output items and every message item removed, the response incomplete."""
    items = body.get("output") if isinstance(body.get("output"), list) else []
    kept = [
        item
        for i, item in enumerate(items)
        if i not in choices and not (isinstance(item, dict) and item.get("type") == "message")
    ]
    out = {k: v for k, v in body.items() if k != "output_text"}
    out |= {"output": kept, "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"}}  # fmt: skip
    return out


def annotate(
    body: dict[str, Any], prompt: dict[str, Any] | None, per_choice: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The Responses API has no filter-result fields: the headers carry the decision. A
    redacted item's text parts lose their `logprobs` (their tokens spell out the text the
    redaction replaced)."""
    items = body.get("output")
    redacted = [
        i for i, results in per_choice.items() if any(r.get("redacted") for r in results.values())
    ]
    if not redacted or not isinstance(items, list):
        return body
    items = list(items)
    for i in redacted:
        item = items[i] if i < len(items) else None
        if isinstance(item, dict) and isinstance(item.get("content"), list):
            parts = [
                dict(p, logprobs=[]) if isinstance(p, dict) and p.get("logprobs") else p
                for p in item["content"]
            ]
            items[i] = dict(item, content=parts)
    return dict(body, output=items)
