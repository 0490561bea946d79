"""Anthropic Messages API: text in `system` (a string or text blocks), every message's
content (a string or blocks: text, `tool_result` content and the blocks inside it,
`tool_use` and `server_tool_use` input, documents' and search results' text, thinking)
and the tools' descriptions; answers per content block (text, tool_use input, server
tools' results, and thinking when the route guards it), the block index standing for the choice."""

from __future__ import annotations

from typing import Any

from proxy.surfaces.text import (
    Path,
    Piece,
    Slot,
    as_list,
    as_object,
    leaves,
    texts,
    tool_defs,
    wrong_type,
)

ENDPOINT = "/v1/messages"
PROMPT_PARAM = "messages"
TEXT_KEYS = frozenset(("text",))
TOOL_RESULT_KEYS = frozenset(("content", "text"))
DOCUMENT_KEYS = frozenset(("title", "context", "source", "data", "content", "text"))
SEARCH_RESULT_KEYS = frozenset(("title", "source", "content", "text"))
THINKING_KEYS = frozenset(("thinking",))
# Server tools' results (web search and fetch, code execution, MCP): where their text is.
SERVER_RESULT_KEYS = frozenset(("content", "text", "title", "stdout", "stderr"))
TOOL_CALLS = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))


def _document(block: dict[str, Any], where: Path) -> list[Slot]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    keys = DOCUMENT_KEYS if kind in ("text", "content") else DOCUMENT_KEYS - {"source"}
    return texts(block, where, keys, strict=False)


def _block(block: dict[str, Any], at: Path) -> list[Slot] | None:
    """The text of a block the model reads as content (None: not such a block). Search
    results and documents (text or content sources) are read whole, title and source too;
    thinking blocks sent back are read as well (a self-hosted upstream does not check
    their signatures)."""
    kind = block.get("type")
    if kind == "text":
        return texts(block, at, TEXT_KEYS)
    if kind == "document":
        return _document(block, at)
    if kind == "search_result":
        return texts(block, at, SEARCH_RESULT_KEYS, strict=False)
    if kind == "thinking":
        return texts(block, at, THINKING_KEYS, strict=False)
    return None


def _server_result(block: dict[str, Any], at: Path) -> list[Slot]:
    """A server tool's result: its text and output, documents in it read as documents (a
    fetched page's text source; a PDF's base64 is not text)."""
    return texts(block, at, SERVER_RESULT_KEYS, strict=False, read=_inner_document)


def _inner_document(node: dict[str, Any], where: Path) -> list[Slot] | None:
    return _document(node, where) if node.get("type") == "document" else None


def _tool_result(block: dict[str, Any], at: Path) -> list[Slot]:
    """A tool result's content: a string, or blocks (text, documents, search results)."""
    if block.get("type") != "tool_result":  # a server tool's (web search and fetch, MCP...)
        return _server_result(block, at)
    where = (*at, "content")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return texts(block, at, TOOL_RESULT_KEYS)
    if not isinstance(content, list):
        raise wrong_type(where, content, "a string or an array")
    slots: list[Slot] = []
    for index, inner in enumerate(content):
        inside = (*where, index)
        inner = as_object(inner, inside)
        found = _block(inner, inside)
        slots += found if found is not None else texts(inner, inside, TOOL_RESULT_KEYS)
    return slots


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
        found = _block(block, at)
        if found is not None:
            own += found
        elif kind in TOOL_CALLS:
            name = block.get("name") if isinstance(block.get("name"), str) else ""
            if isinstance(block.get("id"), str):
                names[block["id"]] = name
            pieces.append(Piece(role, tuple(leaves(block.get("input"), (*at, "input"))), name))
        elif isinstance(kind, str) and kind.endswith("tool_result"):
            slots = _tool_result(block, at)
            pieces.append(Piece("tool", tuple(slots), names.get(block.get("tool_use_id"), "")))
        else:  # a block type this gateway does not know yet: its text, if it has any
            own += texts(block, at, TOOL_RESULT_KEYS, strict=False)
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
        elif kind in TOOL_CALLS:  # a server tool's too (the model's web search query)
            name = block.get("name") if isinstance(block.get("name"), str) else ""
            slots = tuple(leaves(block.get("input"), (*at, "input")))
            pieces.append(Piece("assistant", slots, tool=name, choice=index))
        elif isinstance(kind, str) and kind.endswith("tool_result"):  # a server tool ran
            pieces.append(Piece("tool", tuple(_server_result(block, at)), choice=index))
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
