"""MCP's JSON-RPC messages as the guard sees them: which text a message carries, and the
gateway's own answers (a blocked tool result, JSON-RPC errors).

Messages are read with the official SDK's types (`mcp_types`): a message that is not
valid JSON-RPC, or a guarded result that does not have its method's shape, is refused
rather than guessed at. Text is then reached through `Slot`s pointing into the raw
JSON, so a redacting policy rewrites it in place and everything else is forwarded as it
came. Every string a guarded message carries is read (content blocks of any type,
`structuredContent`, embedded resources, schema text): a field this module does not
know by name is still classified, never skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mcp_types
import orjson
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from proxy.openai_api import Slot

INITIALIZE = "initialize"
DISCOVER = "server/discover"  # MCP 2026-07-28's handshake
TOOLS_CALL = "tools/call"
TOOLS_LIST = "tools/list"
RESOURCES_READ = "resources/read"
PROMPTS_GET = "prompts/get"
COMPLETE = "completion/complete"
# Requests a server sends the client mid-call: their text reaches the client's model
# (sampling) or its user (elicitation).
SERVER_ASKS = frozenset(("sampling/createMessage", "elicitation/create"))
# Listings whose items are screened one by one (a flagged item is dropped): the key of
# the items in the result, and the line the classifier reads before each.
LISTS = {
    TOOLS_LIST: ("tools", "Tool definition:\n"),
    "prompts/list": ("prompts", "Prompt listed by the tool server:\n"),
    "resources/list": ("resources", "Resource listed by the tool server:\n"),
    "resources/templates/list": (
        "resourceTemplates",
        "Resource template listed by the tool server:\n",
    ),
}
# Requests whose results have a shape of their own (checked with the SDK's types).
GUARDED_RESULTS: dict[str, type[BaseModel]] = {
    INITIALIZE: mcp_types.InitializeResult,  # its `instructions` go to the model
    DISCOVER: mcp_types.DiscoverResult,  # likewise
    TOOLS_CALL: mcp_types.CallToolResult,
    TOOLS_LIST: mcp_types.ListToolsResult,
    "prompts/list": mcp_types.ListPromptsResult,
    "resources/list": mcp_types.ListResourcesResult,
    "resources/templates/list": mcp_types.ListResourceTemplatesResult,
    RESOURCES_READ: mcp_types.ReadResourceResult,
    PROMPTS_GET: mcp_types.GetPromptResult,
}

# Keys of a result or params that are plumbing, not text: never classified.
# (`_meta` is not: clients show some of it to their model, e.g. a widget's description.)
PLUMBING = frozenset(("nextCursor", "cursor", "resultType"))

# JSON-RPC error codes: the standard ones, and the gateway's in the server range.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
CONTENT_FILTERED = -32050
GUARD_UNAVAILABLE = -32051
UNREADABLE_RESULT = -32052

# Strings that are structure, not prose, when they have its shape: a type or role
# token, a MIME type, a schema reference, an image's or blob's base64. The same key
# holding anything else (a tool argument named `data`, sentences under `type`) is text
# like any other, classified.
_TOKENS = {
    "type": re.compile(r"[A-Za-z0-9_.-]{1,32}"),
    "role": re.compile(r"[A-Za-z0-9_.-]{1,32}"),
    "format": re.compile(r"[A-Za-z0-9_.-]{1,32}"),
    "mimeType": re.compile(r"[\w.+-]{1,64}/[\w.+-]{1,64}"),
    "$schema": re.compile(r"\S{1,128}"),
    "$ref": re.compile(r"\S{1,128}"),
}
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_BINARY_BLOCKS = frozenset(("image", "audio"))


def _structural(holder: dict[str, Any], key: str, value: str) -> bool:
    token = _TOKENS.get(key)
    if token is not None:
        return token.fullmatch(value) is not None
    if key == "data":  # an image or audio content block's bytes
        binary = holder.get("type") in _BINARY_BLOCKS
    elif key == "blob":  # a resource's bytes
        binary = isinstance(holder.get("uri"), str)
    else:
        return False
    return binary and _BASE64.fullmatch(value) is not None


class Invalid(ValueError):
    """Not a JSON-RPC message the gateway can relay (answered with `code`)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Message:
    """One JSON-RPC message: `kind` is request | notification | response | error."""

    body: dict[str, Any]
    kind: str

    @property
    def id(self) -> Any:
        return self.body.get("id")

    @property
    def method(self) -> str | None:
        method = self.body.get("method")
        return method if isinstance(method, str) else None

    @property
    def tool(self) -> str | None:
        """The tool a `tools/call` (or the prompt a `prompts/get`) names."""
        params = self.body.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        return name if isinstance(name, str) else None


_KINDS = {
    mcp_types.JSONRPCRequest: "request",
    mcp_types.JSONRPCNotification: "notification",
    mcp_types.JSONRPCResponse: "response",
    mcp_types.JSONRPCError: "error",
}


def parse_message(raw: bytes | Any) -> Message:
    """A client's POST body. JSON-RPC batches were removed from MCP in 2025-06-18; a
    batch is refused, so no message in one goes unguarded."""
    if isinstance(raw, (bytes, str)):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Invalid(PARSE_ERROR, "The body is not valid JSON.") from None
    if isinstance(raw, list):
        raise Invalid(INVALID_REQUEST, "JSON-RPC batches are not supported; send one message.")
    return validate(raw)


def validate(raw: Any) -> Message:
    """One decoded JSON-RPC message (a server's are read one by one, batch or not)."""
    if not isinstance(raw, dict):
        raise Invalid(INVALID_REQUEST, "The body is not a JSON-RPC message.")
    try:
        parsed = mcp_types.jsonrpc_message_adapter.validate_python(raw)
    except ValidationError:
        raise Invalid(INVALID_REQUEST, "The body is not a valid JSON-RPC 2.0 message.") from None
    return Message(raw, _KINDS[type(parsed)])


def readable(method: str, result: Any) -> bool:
    """Whether a result has its method's shape (per the SDK's types), if it has one."""
    model = GUARDED_RESULTS.get(method)
    if model is None:
        return True
    try:
        model.model_validate(result)
    except ValidationError:
        return False
    return True


# Object keys are text too (a model reads `{"<sentence>": 1}`): one that is not a short
# name is classified with the values.
_NAME = re.compile(r"[A-Za-z0-9_.$@:/#-]{0,24}")


@dataclass(slots=True)
class KeySlot(Slot):
    """An object key classified like a value. It is not renamed in place: a redaction
    that would rewrite it withholds the message instead (`rewritten`)."""

    rewritten: bool = False

    @property
    def text(self) -> str:
        return str(self.key)

    @text.setter
    def text(self, value: str) -> None:
        self.rewritten = self.rewritten or value != self.key


def rewrites_a_key(slots: list[Slot]) -> bool:
    """Whether a redaction would have rewritten an object key (see `KeySlot`)."""
    return any(isinstance(slot, KeySlot) and slot.rewritten for slot in slots)


def string_slots(holder: Any, role: str = "tool", skip: frozenset[str] = frozenset()) -> list[Slot]:
    """A slot for every string in a JSON value, depth first in document order, structure
    skipped, and the top-level keys in `skip` (slots point into `holder` itself, so a
    redaction lands in the message). Deep nesting is walked without recursion, so a
    deeply nested JSON cannot exhaust the stack."""
    found: list[Slot] = []
    _collect(holder, role, found, 0, skip)
    return found


def _collect(
    holder: Any, role: str, found: list[Slot], depth: int, skip: frozenset[str] = frozenset()
) -> None:
    if depth > _MAX_RECURSION:
        found.extend(_deep_slots(holder, role))
        return
    if isinstance(holder, dict):
        for key, value in holder.items():
            if key in skip:
                continue
            if not _NAME.fullmatch(key):
                found.append(KeySlot(holder, key, role))
            if isinstance(value, str):
                if value and not _structural(holder, key, value):
                    found.append(Slot(holder, key, role))
            elif isinstance(value, (dict, list)):
                _collect(value, role, found, depth + 1)
    elif isinstance(holder, list):
        for index, value in enumerate(holder):
            if isinstance(value, str):
                if value:
                    found.append(Slot(holder, index, role))
            elif isinstance(value, (dict, list)):
                _collect(value, role, found, depth + 1)


_MAX_RECURSION = 50


def _deep_slots(holder: Any, role: str) -> Iterator[Slot]:
    """`string_slots` with an explicit stack, for what lies below `_MAX_RECURSION`."""
    stack: list[Iterator[tuple[Any, Any]]] = [_children(holder)]
    while stack:
        for container, key in stack[-1]:
            value = container[key]
            if isinstance(key, str) and not _NAME.fullmatch(key):
                yield KeySlot(container, key, role)
            if isinstance(value, str):
                if value and not (isinstance(key, str) and _structural(container, key, value)):
                    yield Slot(container, key, role)
            elif isinstance(value, (dict, list)):
                stack.append(_children(value))
                break
        else:
            stack.pop()


def _children(holder: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(holder, dict):
        return ((holder, key) for key in list(holder))
    if isinstance(holder, list):
        return ((holder, index) for index in range(len(holder)))
    return iter(())


# Top-level params that are not the client's text: the tool or prompt name (named in the
# line before the text, so only for tools/call and prompts/get), cursors.
_NOT_INPUT = PLUMBING | {"name"}


# The gateway's answer to a client notification it did not send: 202, no body.
ACCEPTED: dict[str, Any] = {}


def input_slots(message: Message) -> tuple[list[Slot], str] | None:
    """The text a client message carries to the server, and the line saying what it is:
    every request's params (tool and prompt arguments, completion input, a resource's
    uri, ...), and the client's answers and errors to the server's own requests
    (sampling, elicitation), notifications' params (a cancellation's reason, ...)."""
    body = message.body
    if message.kind == "request":
        if message.method in (INITIALIZE, DISCOVER):
            return None  # the client software describing itself, not its model's text
        if message.method == TOOLS_CALL:
            context = f"Call to tool '{message.tool}' with arguments:\n"
        elif message.method == PROMPTS_GET:
            context = f"Arguments for prompt '{message.tool}':\n"
        elif message.method == COMPLETE:
            context = "Completion input:\n"
        else:
            context = f"Request from the client to the tool server ({message.method}):\n"
        named = message.method in (TOOLS_CALL, PROMPTS_GET)
        return string_slots(body.get("params"), skip=_NOT_INPUT if named else PLUMBING), context
    if message.kind == "response":
        return string_slots(body.get("result")), "Answer from the client to the tool server:\n"
    if message.kind == "error":
        return string_slots(body.get("error"), skip=PLUMBING), "Error from the client:\n"
    context = f"Notification from the client ({message.method}):\n"
    return string_slots(body.get("params"), skip=PLUMBING), context


def result_slots(method: str, result: dict[str, Any]) -> list[Slot]:
    """The text of a tools/call, resources/read or prompts/get result,
    or the server's `instructions` in an initialize result."""
    if method in (INITIALIZE, DISCOVER):
        return [Slot(result, "instructions", "tool")] if result.get("instructions") else []
    return string_slots(result, skip=PLUMBING)


_ITEM_HEAD = ("name", "title", "description")
_NOT_REST = frozenset(_ITEM_HEAD)


def item_slots(items: list[Any]) -> list[list[Slot]]:
    """Per item of a listing (a tool, prompt, resource): name, title and description
    first, then every other string (schemas, arguments, annotations, `_meta`)."""
    per_item: list[list[Slot]] = []
    for item in items:
        if not isinstance(item, dict):
            per_item.append(string_slots([item]))
            continue
        head = [Slot(item, key, "tool") for key in _ITEM_HEAD if isinstance(item.get(key), str)]
        per_item.append([*head, *string_slots(item, skip=_NOT_REST)])
    return per_item


# -- the gateway's answers ---------------------------------------------------------------


def result_response(request_id: Any, result: dict[str, Any], version: str | None) -> dict[str, Any]:
    """A result the gateway answers with, in the envelope of the protocol `version` the
    client speaks (2026-07-28 results say they are complete)."""
    if version in MODERN_PROTOCOL_VERSIONS:
        result = result | {"resultType": "complete"}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(
    request_id: Any, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def tool_error(text: str) -> dict[str, Any]:
    """A `tools/call` result the calling model reads as the tool's failure."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


def named(policies: list[str]) -> str:
    quoted = ", ".join(f"'{p}'" for p in policies)
    return f"polic{'ies' if len(policies) > 1 else 'y'} {quoted}"


def blocked_arguments(tool: str | None, policies: list[str]) -> dict[str, Any]:
    return tool_error(
        f"The gateway blocked this call to tool '{tool}': its arguments were flagged by "
        f"{named(policies)}. The tool was not called."
    )


def withheld_result(tool: str | None, policies: list[str]) -> dict[str, Any]:
    which = f"tool '{tool}'" if tool else "a tool"
    return tool_error(
        f"The gateway withheld the result of {which}: it was flagged by "
        f"{named(policies)} (for example, instructions hidden in the tool's output). "
        "Do not retry the same call expecting a different result."
    )
