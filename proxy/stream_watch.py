"""Watching a stream go by: its usage, finish reasons and last event (for token metrics
and the upstream span), and whether the upstream sent its terminator."""

from __future__ import annotations

import re
from typing import Any

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.openai_api import RESPONSES
from proxy.sse import RESPONSES_TERMINAL, Event, EventSplitter, parse_event, usage_of

# Events worth parsing when only watching: usage, a finish reason, the Responses envelope.
_NOTEWORTHY = re.compile(
    rb'"usage"|"finish_reason":\s*"|response\.(?:created|completed|incomplete)'
)


def _ending(names: frozenset[str]) -> re.Pattern[bytes]:
    """An event named one of `names` in raw bytes: its `event:` line, or (an event without
    one) a `data:` line whose object starts with that `type`. Both start a line, and JSON
    text holds no raw line break, so text a model wrote cannot look like them."""
    alts = b"|".join(re.escape(name.encode()) for name in sorted(names))
    named = rb"event: ?(?:" + alts + rb")[\r\n]"
    typed = rb'data: ?\{"type": ?"(?:' + alts + rb')"'
    return re.compile(rb"[\r\n](?:" + named + rb"|" + typed + rb")")


_ENDS = {RESPONSES: _ending(RESPONSES_TERMINAL), MESSAGES: _ending(anthropic_sse.TERMINAL)}


class StreamWatch:
    """Usage, finish reasons and the last event of a stream, from its parsed events."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        self._last: Event | dict[str, Any] | None = None
        self._splitter: EventSplitter | None = None

    @property
    def last(self) -> dict[str, Any] | None:
        """The last chunk (Responses: the response as created; Messages: the message)."""
        last = self._last
        return last.data if isinstance(last, Event) else last

    def events(self, events: list[Event]) -> None:
        """A read's events. A plain text delta has nothing to note but that it came last."""
        chat = self.endpoint != RESPONSES and self.endpoint != MESSAGES
        for event in events:
            if not event.plain:
                self.event(event)
            elif chat:
                self._last = event

    def event(self, event: Event) -> None:
        if event.plain:
            self.events([event])
            return
        data = event.data
        if data is None:
            return
        if self.endpoint == MESSAGES:
            message, self.usage, reason = anthropic_sse.observe(data, self.usage)
            self._last = message or self._last
            if reason:
                self.finish_reasons.append(reason)
            return
        if self.endpoint == RESPONSES:
            kind = data.get("type")
            if kind == "response.created":
                self._last = data
            elif kind in ("response.completed", "response.incomplete"):
                self.finish_reasons.append(str((data.get("response") or {}).get("status")))
        else:
            self._last = event
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
            if self._last is None or _NOTEWORTHY.search(raw):
                self.event(parse_event(raw, self.endpoint))


class Terminator:
    """Whether a relayed (unparsed) stream carried its end marker: `data: [DONE]` last, or
    for the Responses and Messages APIs an ending event (or the upstream's `error`)."""

    def __init__(self, endpoint: str) -> None:
        self._ending = _ENDS.get(endpoint)  # None: the stream ends with [DONE]
        self.seen = False
        self._tail = b"\n"  # the last bytes read (a marker may straddle two reads)

    def see(self, chunk: bytes) -> None:
        if self._ending is not None and not self.seen:
            self.seen = self._ending.search(self._tail + chunk) is not None
        self._tail = (self._tail + chunk)[-64:] if len(chunk) < 64 else chunk[-64:]

    @property
    def terminated(self) -> bool:
        if self._ending is not None:
            return self.seen
        return self._tail.rstrip().endswith(b"[DONE]")
