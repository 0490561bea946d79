"""Server-sent events as the three generation APIs use them: framing, text deltas, rewrites.

Events keep their raw bytes so anything forwarded unchanged is byte-identical to what
the upstream sent; only an event whose text is redacted is re-serialized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.openai_api import COMPLETIONS, RESPONSES

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventSplitter:
    """Cuts a byte stream into whole events (each with its terminating blank line)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        events, start = [], 0
        for match in _BOUNDARY.finditer(data):
            events.append(data[start : match.end()])
            start = match.end()
        self._pending = data[start:]
        return events

    def rest(self) -> bytes:
        """Whatever trailed the last blank line when the stream ended."""
        rest, self._pending = self._pending, b""
        return rest


@dataclass(slots=True)
class Event:
    raw: bytes
    name: str | None = None  # the `event:` field (the Responses API names its events)
    data: dict[str, Any] | None = None
    done: bool = False  # `data: [DONE]`
    texts: dict[int, str] = field(default_factory=dict)  # choice/output index -> text delta

    @property
    def type(self) -> str | None:
        return self.data.get("type") if self.data else None


def parse_event(raw: bytes, endpoint: str, thinking: bool = False) -> Event:
    name = None
    data_lines = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data_lines.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    event = Event(raw, name)
    if not data_lines:
        return event
    payload = b"\n".join(data_lines)
    if payload.strip() == b"[DONE]":
        event.done = True
        return event
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event
    if isinstance(data, dict):
        event.data = data
        event.texts = (
            anthropic_sse.texts(data, thinking) if endpoint == MESSAGES else _texts(data, endpoint)
        )
    return event


def _texts(data: dict[str, Any], endpoint: str) -> dict[int, str]:
    if endpoint == RESPONSES:
        if data.get("type") == "response.output_text.delta" and isinstance(data.get("delta"), str):
            return {int(data.get("output_index") or 0): data["delta"]}
        return {}
    texts: dict[int, str] = {}
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint == COMPLETIONS:
            text = choice.get("text")
        else:
            text = (choice.get("delta") or {}).get("content")
        if isinstance(text, str) and text:
            texts[int(choice.get("index") or 0)] = text
    return texts


def serialize(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def with_texts(event: Event, endpoint: str, texts: dict[int, str]) -> bytes:
    """The event re-serialized with its text deltas replaced."""
    assert event.data is not None
    data = orjson.loads(orjson.dumps(event.data))  # deep copy; the original stays intact
    if endpoint == MESSAGES:
        anthropic_sse.with_texts(data, texts, thinking=True)
    elif endpoint == RESPONSES:
        data["delta"] = texts.get(int(data.get("output_index") or 0), "")
    else:
        for choice in data.get("choices") or ():
            index = int(choice.get("index") or 0)
            if index in texts:
                if endpoint == COMPLETIONS:
                    choice["text"] = texts[index]
                else:
                    choice["delta"]["content"] = texts[index]
    return serialize(data, event.name)


def with_final_text(event: Event, texts: dict[int, str]) -> bytes:
    """A Responses API `*.done`/`response.completed` event restated with the released text."""
    assert event.data is not None
    data = orjson.loads(orjson.dumps(event.data))

    def fix_item(item: dict[str, Any], index: int) -> None:
        for part in item.get("content") or ():
            if part.get("type") == "output_text" and index in texts:
                part["text"] = texts[index]

    index = int(data.get("output_index") or 0)
    kind = data.get("type")
    if kind == "response.output_text.done" and index in texts:
        data["text"] = texts[index]
    elif kind == "response.content_part.done" and isinstance(data.get("part"), dict):
        fix_item({"content": [data["part"]]}, index)
    elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
        fix_item(data["item"], index)
    elif kind in ("response.completed", "response.incomplete") and isinstance(
        data.get("response"), dict
    ):
        for i, item in enumerate(data["response"].get("output") or ()):
            if isinstance(item, dict):
                fix_item(item, i)
    return serialize(data, event.name)


def usage_of(event: Event) -> dict[str, Any] | None:
    """Token usage carried by an event (chat/completions usage chunk, response.completed)."""
    if event.data is None:
        return None
    usage = event.data.get("usage")
    if usage is None and isinstance(event.data.get("response"), dict):
        usage = event.data["response"].get("usage")
    return usage if isinstance(usage, dict) else None
