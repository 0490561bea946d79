"""Watching a stream go by: its usage, finish reasons and last event (for token metrics
and the upstream span), and whether the upstream sent its terminator."""

from __future__ import annotations

import re
from typing import Any

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.openai_api import RESPONSES
from proxy.sse import Event, EventSplitter, parse_event, usage_of

# Events worth parsing when only watching: usage, a finish reason, the Responses envelope.
_NOTEWORTHY = re.compile(
    rb'"usage"|"finish_reason":\s*"|response\.(?:created|completed|incomplete)'
)
# What ends a Responses stream, as bytes (an unparsed relay looks for these).
_RESPONSES_ENDS = (
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
    b"event: error",
)

_ENDS = {RESPONSES: _RESPONSES_ENDS, MESSAGES: (b"event: message_stop", b"event: error")}


class StreamWatch:
    """Usage, finish reasons and the last event of a stream, from its parsed events."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        self.last: dict[str, Any] | None = None
        self._splitter: EventSplitter | None = None

    def event(self, event: Event) -> None:
        data = event.data
        if data is None:
            return
        if self.endpoint == MESSAGES:
            message, self.usage, reason = anthropic_sse.observe(data, self.usage)
            self.last = message or self.last
            if reason:
                self.finish_reasons.append(reason)
            return
        if self.endpoint == RESPONSES:
            kind = data.get("type")
            if kind == "response.created":
                self.last = data
            elif kind in ("response.completed", "response.incomplete"):
                self.finish_reasons.append(str((data.get("response") or {}).get("status")))
        else:
            self.last = data
            for choice in data["choices"] if event.finishing else ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reasons.append(str(choice["finish_reason"]))
        if "usage" in data or "response" in data:
            self.usage = usage_of(event) or self.usage

    def chunk(self, chunk: bytes) -> None:
        """Raw bytes of an unparsed stream: only the events worth noting are parsed."""
        if self._splitter is None:
            self._splitter = EventSplitter()
        for raw in self._splitter.feed(chunk):
            if self.last is None or _NOTEWORTHY.search(raw):
                self.event(parse_event(raw, self.endpoint))


class Terminator:
    """Whether a relayed (unparsed) stream carried its end marker: `data: [DONE]` last, or
    for the Responses API a final `response.*` event (or the upstream's `error`)."""

    def __init__(self, endpoint: str) -> None:
        self.responses = endpoint in _ENDS  # ends with a named event, not [DONE]
        self._ends = _ENDS.get(endpoint, ())
        self.seen = False
        self._tail = b""

    def see(self, chunk: bytes) -> None:
        if self.responses and not self.seen:
            edge = self._tail + chunk[:24]  # a marker across the previous read's end
            self.seen = any(m in chunk or m in edge for m in self._ends)
        self._tail = chunk[-24:] if len(chunk) >= 24 else (self._tail + chunk)[-24:]

    @property
    def terminated(self) -> bool:
        return self.seen or (not self.responses and self._tail.rstrip().endswith(b"[DONE]"))
