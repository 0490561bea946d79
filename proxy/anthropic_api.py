"""Anthropic Messages API wire shapes: error bodies, the guardable text of a request and
of a message, and what a withheld completion looks like.

Text sits in many places of a Messages request: `system` (a string or text blocks),
every message's content (a string or blocks: text, `tool_result` content, `tool_use`
input, documents' text) and the tools' descriptions. `Slot`s point at each place, as for
the OpenAI endpoints, so policies read the text and redaction writes it back in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from proxy.openai_api import OpenAIError, Slot, _content_slots  # a string or text blocks

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
ENDPOINTS = (MESSAGES, COUNT_TOKENS)
DEFAULT_VERSION = "2023-06-01"  # anthropic-version sent when the client gives none

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: OpenAIError, request_id: str | None = None) -> bytes:
    """A gateway error in Anthropic's shape: {"type": "error", "error": {type, message}}.

    The gateway's own `code` (e.g. guard_unavailable, content_filter) and a blocked
    prompt's per-policy results ride along as extra fields the SDKs ignore."""
    error: dict[str, Any] = {"type": error_type(exc.status), "message": exc.message}
    if exc.code:
        error["code"] = exc.code
    inner = exc.extra.get("innererror")
    if isinstance(inner, dict) and "content_filter_result" in inner:
        error["content_filter_result"] = inner["content_filter_result"]
    body: dict[str, Any] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


class _JsonField:
    """A block's JSON value (`tool_use.input`) seen by a Slot as text: policies read it as
    JSON, and a redaction is written back when the redacted text still parses."""

    __slots__ = ("block", "key")

    def __init__(self, block: dict[str, Any], key: str) -> None:
        self.block, self.key = block, key

    def __getitem__(self, key: str) -> str:
        return orjson.dumps(self.block.get(key)).decode()

    def __setitem__(self, key: str, text: str) -> None:
        try:
            self.block[key] = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.block[key] = {}  # never forward what a redaction could not rewrite


def json_slot(block: dict[str, Any], key: str, role: str) -> Slot:
    return Slot(_JsonField(block, key), key, role)  # type: ignore[arg-type]


def _block_slots(block: Any, role: str) -> Iterator[Slot]:
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        yield Slot(block, "text", role)
    elif kind == "tool_result":
        yield from _content_slots(block, "content", "tool")
    elif kind == "tool_use" and "input" in block:
        yield json_slot(block, "input", role)
    elif kind == "document":
        for key in ("title", "context"):
            if isinstance(block.get(key), str):
                yield Slot(block, key, role)
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            if isinstance(source.get("data"), str):
                yield Slot(source, "data", role)
        elif isinstance(source, dict) and source.get("type") == "content":
            yield from _content_slots(source, "content", role)


def turns(body: dict[str, Any]) -> Iterator[tuple[str, list[Slot]]]:
    """(role, slots) in the order the model reads them: tool definitions, system, messages."""
    tools = body.get("tools")
    if isinstance(tools, list):
        described = [
            Slot(t, "description", "tools")
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("description"), str)
        ]
        if described:
            yield "tools", described
    if "system" in body:
        yield "system", list(_content_slots(body, "system", "system"))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", "user"))
        content = message.get("content")
        if isinstance(content, str):
            yield role, [Slot(message, "content", role)]
        elif isinstance(content, list):
            yield role, [slot for block in content for slot in _block_slots(block, role)]


def input_slots(body: dict[str, Any], scope: str) -> list[Slot]:
    """The request text a policy of this scope reads (and redaction may rewrite)."""
    found = list(turns(body))
    if scope == "last_user":
        return next((slots for role, slots in reversed(found) if role == "user"), [])
    if scope == "assistant":
        return [slot for role, slots in found if role == "assistant" for slot in slots]
    return [slot for _, slots in found for slot in slots]


def output_slots(body: dict[str, Any], thinking: bool = False) -> list[list[Slot]]:
    """The answer's guardable text per content block (the block index is the `choice`):
    text, tool_use input as JSON text, and thinking when the route guards it."""
    blocks: list[list[Slot]] = []
    for block in body.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            blocks.append([Slot(block, "text", "assistant")])
        elif kind == "tool_use" and "input" in block:
            blocks.append([json_slot(block, "input", "assistant")])
        elif kind == "thinking" and thinking and isinstance(block.get("thinking"), str):
            blocks.append([Slot(block, "thinking", "assistant")])
        else:
            blocks.append([])
    return blocks


def withhold(body: dict[str, Any], blocked: set[int | None]) -> None:
    """A withheld completion: the content from the first flagged block on is dropped (a
    stream stops there too) and the message ends with `stop_reason: "refusal"`."""
    if not blocked:
        return
    first = min((i for i in blocked if i is not None), default=0)
    content = body.get("content")
    body["content"] = content[:first] if isinstance(content, list) else []
    body["stop_reason"] = "refusal"
    body["stop_sequence"] = None


def not_messages_route(route: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"Your route {route!r} does not lead to a Messages API upstream "
        "(its upstream needs `api: anthropic`).",
        code="route_not_anthropic",
    )
