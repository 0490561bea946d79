"""Hold-back windows over a stream's events: pure bookkeeping, no I/O, no clock.

Windows grow: the first seals after `first` characters (so the first token waits for a
small window and one classifier call), each next one is twice as large, up to `size`
(`window_chars`), so a long answer still costs few calls. With detectors, the last `hold`
characters stay unsealed and a seal never falls inside a detector match, so a pattern
is redacted whole even when it arrives in pieces. Texts are kept per channel (choice,
tool call, refusal; see proxy/sse.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.guard.detectors import MAX_SPAN_CHARS, find_spans
from proxy.sse import Event, Key


@dataclass(slots=True)
class Sealed:
    events: list[Event]
    texts: dict[Key, str]  # channel -> this window's text
    context: dict[Key, str]  # channel -> tail of the text released before it


class Window:
    """Push events, get sealed windows back. `size` None: seal only on flush (buffer)."""

    def __init__(
        self,
        size: int | None,
        overlap: int,
        hold: int = 0,
        detectors: tuple[str, ...] = (),
        first: int | None = None,
    ) -> None:
        self.size, self.overlap, self.hold, self.detectors = size, overlap, hold, detectors
        self._next = size if size is None or not first else min(first, size)
        self._events: list[Event] = []
        self._sizes: list[int] = []  # each event's characters
        self._chars = 0
        self._tail: dict[Key, str] = {}

    def push(self, event: Event, seal: bool = True) -> Sealed | None:
        """Add an event; with `seal`, seal a window if one is full."""
        size = 0
        for text in event.texts.values():
            size += len(text)
        self._events.append(event)
        self._sizes.append(size)
        self._chars += size
        return self.full() if seal else None

    def full(self) -> Sealed | None:
        """A window if one is full: what waits, but at most about `size` characters (events
        read together may fill several; the first of them may be a small growing one)."""
        if self._next is None or self._chars < max(1, self._next + self.hold):
            return None
        return self._seal(self._cut(self.size))

    def flush(self) -> Sealed | None:
        return self._seal(len(self._events)) if self._events else None

    @property
    def waiting(self) -> int:
        """Characters pushed but not sealed yet."""
        return self._chars

    @property
    def empty(self) -> bool:
        return not self._events

    def seal_early(self) -> Sealed | None:
        """Seal what may go out now, before the window fills (the hold still stays back)."""
        return self._seal(self._cut()) if self._chars > self.hold else None

    def _cut(self, limit: int | None = None) -> int:
        """Index of the first event kept back: `hold` chars, and no match cut in two; with
        `limit`, the events after the first `limit` characters too."""
        sizes = self._sizes
        cut, kept = len(sizes), 0
        while self.hold and cut > 0 and kept < self.hold:
            cut -= 1
            kept += sizes[cut]
        if limit is not None and self._chars - kept > limit:
            total = 0
            for i in range(cut):
                total += sizes[i]
                if total >= limit:
                    # a limit that would cut a match in two: the match goes whole
                    return self._whole_matches(i + 1) or self._whole_matches(cut)
        return self._whole_matches(cut)

    def _whole_matches(self, cut: int) -> int:
        """`cut`, moved back so that no detector match is cut in two."""
        if not self.detectors:
            return cut
        matches = []  # per channel: event start offsets and the spans found in its text
        for key in {k for e in self._events for k in e.texts}:
            starts, pieces, at = [], [], 0
            for event in self._events:
                piece = event.texts.get(key, "")
                starts.append(at)
                pieces.append(piece)
                at += len(piece)
            matches.append((starts, at, find_spans("".join(pieces), self.detectors)))
        moved = True
        while moved:  # moving back past one match can land inside an earlier one
            moved = False
            for starts, length, spans in matches:
                boundary = starts[cut] if cut < len(starts) else length
                for span in spans:
                    if span.start < boundary < span.end:
                        cut = max(i for i, at in enumerate(starts) if at <= span.start)
                        boundary, moved = starts[cut], True
        return cut

    def _seal(self, cut: int) -> Sealed | None:
        if cut == 0:
            return None
        events, self._events = self._events[:cut], self._events[cut:]
        self._chars -= sum(self._sizes[:cut])
        del self._sizes[:cut]
        parts: dict[Key, list[str]] = {}
        for event in events:
            for key, text in event.texts.items():
                if (part := parts.get(key)) is not None:
                    part.append(text)
                else:
                    parts[key] = [text]
        texts = {key: "".join(p) for key, p in parts.items()}
        if texts and self._next is not None and self.size is not None:
            self._next = min(self._next * 2, self.size)
        context = {k: self._tail.get(k, "") for k in texts}
        if self.overlap:
            for key, text in texts.items():
                self._tail[key] = (self._tail.get(key, "") + text)[-self.overlap :]
        return Sealed(events, texts, context)


def hold_chars(detectors: tuple[str, ...]) -> int:
    """How much text a window keeps back for these detectors: every match of the PII
    patterns fits in 128 characters; secrets (long API keys, JWTs) need MAX_SPAN_CHARS."""
    if not detectors:
        return 0
    return MAX_SPAN_CHARS if "secret" in detectors else 128
