"""The Messages API's server-sent events: which carry guardable text, how a stream the
gateway stops ends, and what a watching guard notes (message, usage, stop reason).

Events are named (`event: content_block_delta`) and their data repeats the name as
`type`. Text arrives in `content_block_delta` events, keyed by the content block's
`index`: `text_delta.text`, `input_json_delta.partial_json` (a tool call's input, as
JSON text in pieces) and `thinking_delta.thinking`. The block index plays the part a
choice index plays for Chat Completions: each block's text is windowed on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.anthropic_api import error_type

TERMINAL = frozenset(("message_stop", "error"))  # events that end a stream
_DELTA_TEXT = {"text_delta": "text", "input_json_delta": "partial_json"}
_THINKING = {**_DELTA_TEXT, "thinking_delta": "thinking"}


def _index(value: Any) -> int:
    return value if type(value) is int else 0  # a block index the stream sent garbled


def _field(data: dict[str, Any], thinking: bool) -> tuple[int, dict[str, Any], str] | None:
    kind = data.get("type")
    if kind == "content_block_start":  # a text block may start with text (the SDK keeps it)
        block = data.get("content_block")
        if isinstance(block, dict) and block.get("type") == "text" and "text" in block:
            text_block = _index(data.get("index")), block, "text"
            return text_block if type(block["text"]) is str else None
        return None
    if kind != "content_block_delta":
        return None
    delta = data.get("delta")
    if not isinstance(delta, dict):
        return None
    key = (_THINKING if thinking else _DELTA_TEXT).get(str(delta.get("type")))
    if key is None or not isinstance(delta.get(key), str):
        return None
    return _index(data.get("index")), delta, key


def _not_text(delta: Any) -> bool:
    if not isinstance(delta, dict):
        return False
    key = _THINKING.get(str(delta.get("type")))
    return key is not None and key in delta and type(delta[key]) is not str


def texts(data: dict[str, Any], thinking: bool = False) -> dict[int, str]:
    """Block index -> the text this event adds (thinking only when the route guards it)."""
    found = _field(data, thinking)
    if found is None:
        return {}
    index, delta, key = found
    return {index: delta[key]} if delta[key] else {}


def read(data: dict[str, Any], event: Any, thinking: bool = False) -> None:
    """Fill a parsed `sse.Event` from a Messages API event: its text per block, a tool
    call's name (its block's `content_block_start`), and whether the stream ends here."""
    kind = data.get("type")
    if kind == "content_block_delta":
        found = texts(data, thinking)
        if found:
            event.texts = found
        elif _not_text(data.get("delta")):
            event.garbled = True  # parts or numbers where a delta has text: never sent
    elif kind == "content_block_start":
        if found := texts(data, thinking):
            event.texts = found
        block = data.get("content_block")
        name = block.get("name") if isinstance(block, dict) else None
        if isinstance(name, str) and block.get("type") == "tool_use":  # type: ignore[union-attr]
            event.names = {_index(data.get("index")): name}
    elif kind in TERMINAL:
        event.terminal = True


def with_texts(data: dict[str, Any], texts: Mapping[Any, str]) -> None:
    """Rewrite a (copied) delta event's text in place: a redacted window's text."""
    found = _field(data, thinking=True)
    if found is not None and found[0] in texts:
        index, delta, key = found
        delta[key] = texts[index]


def frame(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def end_frames(reason: str = "refusal") -> bytes:
    """Where forwarding stops: the message ends with `stop_reason` refusal. Blocks still
    open stay unclosed (their starts may never have been released)."""
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": {"output_tokens": 0},
    }
    return frame(delta) + frame({"type": "message_stop"})


def error_frame(message: str, code: str, status: int = 503) -> bytes:
    """An error mid-stream: the Messages API's `error` event (the SDK raises on it)."""
    error = {"type": error_type(status), "message": message, "code": code}
    return frame({"type": "error", "error": error})


def observe(
    data: dict[str, Any], usage: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """What a stream event tells the record: (the message from `message_start`, usage so
    far, a stop reason). Usage starts in message_start and grows in message_delta."""
    kind = data.get("type")
    if kind == "message_start" and isinstance(data.get("message"), dict):
        message = data["message"]
        found = message.get("usage")
        return message, dict(found) if isinstance(found, dict) else usage, None
    if kind == "message_delta":
        found = data.get("usage")
        if isinstance(found, dict):
            usage = {**(usage or {}), **{k: v for k, v in found.items() if v is not None}}
        delta = data.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        return None, usage, reason if isinstance(reason, str) else None
    return None, usage, None
