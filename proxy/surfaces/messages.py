"""Anthropic Messages API: text in `system` (a string or text blocks), every message's
content (a string or blocks: text, `tool_result` content, `tool_use` input, documents'
text) and the tools' descriptions; answers per content block (text, tool_use input, and
thinking when the route guards it), the block index standing for the choice."""

from __future__ import annotations

from typing import Any

from proxy.surfaces.text import (
    Path,
    Piece,
    Slot,
    as_list,
    as_object,
    texts,
    tool_defs,
    wrong_type,
)

ENDPOINT = "/v1/messages"
PROMPT_PARAM = "messages"
TEXT_KEYS = frozenset(("text",))
TOOL_RESULT_KEYS = frozenset(("content", "text"))
DOCUMENT_KEYS = frozenset(("title", "context", "source", "data", "content", "text"))


def leaves(value: Any, path: Path) -> list[Slot]:
    """Every string inside a JSON value (a tool call's input), in document order."""
    out: list[Slot] = []
    stack: list[tuple[Any, Path]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            out.append(Slot(where, node))
        elif isinstance(node, dict):
            stack.extend(reversed([(v, (*where, k)) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(v, (*where, i)) for i, v in enumerate(node)]))
    return out


def _document(block: dict[str, Any], where: Path) -> list[Slot]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    keys = DOCUMENT_KEYS if kind in ("text", "content") else DOCUMENT_KEYS - {"source"}
    return texts(block, where, keys, strict=False)


def _content(role: str, content: Any, where: Path, names: dict[str, str]) -> list[Piece]:
    """A message's pieces: its text (and documents) as one, each tool call and each tool
    result on its own (a tool result is the tool's turn, as in Chat Completions)."""
    if isinstance(content, str):
        return [Piece(role, (Slot(where, content),))]
    if not isinstance(content, list):
        raise wrong_type(where, content, "a string or an array")
    own: list[Slot] = []
    pieces: list[Piece] = []
    for index, block in enumerate(content):
        at = (*where, index)
        block = as_object(block, at)
        kind = block.get("type")
        if kind == "text":
            own += texts(block, at, TEXT_KEYS)
        elif kind == "document":
            own += _document(block, at)
        elif kind == "tool_use":
            name = block.get("name") if isinstance(block.get("name"), str) else ""
            if isinstance(block.get("id"), str):
                names[block["id"]] = name
            pieces.append(Piece(role, tuple(leaves(block.get("input"), (*at, "input"))), name))
        elif kind == "tool_result":
            slots = texts(block, at, TOOL_RESULT_KEYS)
            pieces.append(Piece("tool", tuple(slots), names.get(block.get("tool_use_id"), "")))
    return [Piece(role, tuple(own)), *pieces] if own else pieces


def input_pieces(body: dict[str, Any]) -> list[Piece]:
    pieces: list[Piece] = []
    system = body.get("system")
    if system is not None:
        pieces += _content("system", system, ("system",), {})
    names: dict[str, str] = {}  # tool_use id -> tool name, for the tool results after it
    for index, message in enumerate(as_list(body, "messages", required=True)):
        where = ("messages", index)
        message = as_object(message, where)
        role = message.get("role", "user")
        if not isinstance(role, str):
            raise wrong_type((*where, "role"), role, "a string")
        pieces += _content(role, message.get("content"), (*where, "content"), names)
    return pieces + tool_defs(as_list(body, "tools"), "tools")


def output_pieces(body: dict[str, Any], thinking: bool = False) -> list[Piece]:
    """One piece per content block the guard reads; `choice` is the block's index."""
    pieces = []
    blocks = body.get("content")
    for index, block in enumerate(blocks if isinstance(blocks, list) else ()):
        if not isinstance(block, dict):
            continue
        at = ("content", index)
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            pieces.append(Piece("assistant", (Slot((*at, "text"), block["text"]),), choice=index))
        elif kind == "tool_use":
            name = block.get("name") if isinstance(block.get("name"), str) else ""
            slots = tuple(leaves(block.get("input"), (*at, "input")))
            pieces.append(Piece("assistant", slots, tool=name, choice=index))
        elif kind == "thinking" and thinking and isinstance(block.get("thinking"), str):
            slot = Slot((*at, "thinking"), block["thinking"])
            pieces.append(Piece("assistant", (slot,), choice=index))
    return pieces


def withhold(body: dict[str, Any], choices: frozenset[int]) -> dict[str, Any]:
    """The content from the first flagged block on is dropped (a stream stops there too)
    and the message ends with `stop_reason: "refusal"`."""
    content = body.get("content")
    kept = content[: min(choices)] if isinstance(content, list) and choices else []
    return dict(body, content=kept, stop_reason="refusal", stop_sequence=None)


def annotate(
    body: dict[str, Any], prompt: dict[str, Any] | None, per_choice: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The Messages API has no filter-result fields: the headers carry the decision."""
    return body
