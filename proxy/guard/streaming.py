"""Output guard for streamed answers: hold-back windows released only once cleared.

`window` mode seals the held events every `window_chars` of text and classifies each
sealed window (with `overlap_chars` of the previous text as context, so a violation
split across windows is still seen) while the upstream keeps streaming; windows are
released strictly in order, each as soon as its own verdict allows it. `buffer` seals
once, at the end. `passthrough` forwards at once and only records the verdict.
When detectors may redact, the last `hold` characters stay behind so a pattern is never
cut in two by a window edge.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.config import Side
from proxy.guard.detectors import MAX_SPAN_CHARS, find_spans
from proxy.guard.engine import Guard, Outcome, decide, worse
from proxy.openai_api import COMPLETIONS, RESPONSES, OpenAIError
from proxy.policies import Policy
from proxy.sse import (
    Event,
    EventSplitter,
    parse_event,
    serialize,
    usage_of,
    with_final_text,
    with_texts,
)

_NOTEWORTHY = re.compile(
    rb'"usage"|"finish_reason":\s*"|response\.(?:created|completed|incomplete)'
)  # events a watching StreamGuard reads: usage, a finish reason, the Responses envelope
_RESPONSES_FINAL = frozenset(
    (
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
    )
)


def _chars(event: Event) -> int:
    return sum(len(t) for t in event.texts.values())


@dataclass(slots=True)
class Sealed:
    events: list[Event]
    texts: dict[int, str]  # choice index -> this window's text
    context: dict[int, str]  # choice index -> tail of the text released before it


class Window:
    """Pure hold-back bookkeeping: push events, get sealed windows back.

    With `detectors`, the last `hold` characters stay unsealed and the seal never falls
    inside a detector match, so a pattern is redacted whole even when it arrives in pieces.
    """

    def __init__(
        self, size: int | None, overlap: int, hold: int = 0, detectors: tuple[str, ...] = ()
    ) -> None:
        self.size, self.overlap, self.hold, self.detectors = size, overlap, hold, detectors
        self._events: list[Event] = []
        self._chars = 0
        self._tail: dict[int, str] = {}

    def push(self, event: Event) -> Sealed | None:
        self._events.append(event)
        self._chars += _chars(event)
        if self.size is not None and self._chars >= self.size + self.hold:
            return self._seal(self._cut())
        return None

    def flush(self) -> Sealed | None:
        return self._seal(len(self._events)) if self._events else None

    @property
    def waiting(self) -> int:
        """Characters pushed but not sealed yet."""
        return self._chars

    def seal_early(self) -> Sealed | None:
        """Seal what may go out now, before the window fills (the hold still stays back)."""
        return self._seal(self._cut()) if self._chars > self.hold else None

    def _cut(self) -> int:
        """Index of the first event kept back: `hold` chars, and no match cut in two."""
        cut, kept = len(self._events), 0
        while self.hold and cut > 0 and kept < self.hold:
            cut -= 1
            kept += _chars(self._events[cut])
        if not self.detectors:
            return cut
        matches = []  # per choice: event start offsets and the spans found in its text
        for index in {i for e in self._events for i in e.texts}:
            starts, pieces, at = [], [], 0
            for event in self._events:
                piece = event.texts.get(index, "")
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
        self._chars = sum(_chars(e) for e in self._events)
        texts: dict[int, str] = {}
        for event in events:
            for index, text in event.texts.items():
                texts[index] = texts.get(index, "") + text
        context = {i: self._tail.get(i, "") for i in texts}
        if self.overlap:
            for index, text in texts.items():
                self._tail[index] = (self._tail.get(index, "") + text)[-self.overlap :]
        return Sealed(events, texts, context)


def hold_chars(detectors: tuple[str, ...]) -> int:
    """How much text a window keeps back for these detectors: every match of the PII
    patterns fits in 128 characters; secrets (long API keys, JWTs) need MAX_SPAN_CHARS."""
    if not detectors:
        return 0
    return MAX_SPAN_CHARS if "secret" in detectors else 128


def end_frames(endpoint: str, last: dict[str, Any] | None, reason: str = "content_filter") -> bytes:
    """What a client sees when forwarding stops: a final chunk per choice, then [DONE]."""
    last = last or {}
    if endpoint == MESSAGES:
        return anthropic_sse.end_frames("refusal" if reason == "content_filter" else reason)
    if endpoint == RESPONSES:
        response = dict(last.get("response") or {})
        response.update(status="incomplete", incomplete_details={"reason": reason}, output=[])
        return serialize(
            {"type": "response.incomplete", "response": response}, "response.incomplete"
        )
    indexes = sorted({int(c.get("index") or 0) for c in last.get("choices") or ()}) or [0]
    base = {
        k: last[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in last
    }
    key = "text" if endpoint == COMPLETIONS else "delta"
    empty: Any = "" if endpoint == COMPLETIONS else {}
    choices = [{"index": i, key: empty, "finish_reason": reason} for i in indexes]
    return serialize(base | {"choices": choices}) + b"data: [DONE]\n\n"


def error_frame(endpoint: str, message: str, code: str) -> bytes:
    """An error mid-stream: the Responses API's `error` event, else OpenAI's error body."""
    if endpoint == MESSAGES:
        return anthropic_sse.error_frame(message, code)
    if endpoint == RESPONSES:
        return serialize(
            {"type": "error", "code": code, "message": message, "param": None}, "error"
        )
    return b"data: " + OpenAIError(503, message, type="server_error", code=code).body() + b"\n\n"


class StreamGuard:
    """Runs one streamed answer through the output side; records what it decided."""

    def __init__(
        self,
        guard: Guard,
        side: Side,
        policies: Mapping[str, Policy],
        endpoint: str,
        fail: str,
    ) -> None:
        self.guard, self.side, self.policies = guard, side, policies
        self.endpoint, self.fail = endpoint, fail
        size = None if side.stream == "buffer" else side.window_chars
        self.wait_s = None if size is None else side.window_ms / 1000  # longest text waits
        detectors = tuple(sorted({d for r in side.policies for d in policies[r.id].detectors}))
        self.window = Window(size, side.overlap_chars, hold_chars(detectors), detectors)
        self.outcomes: list[Outcome] = []
        self.shadow: list[asyncio.Future[Outcome | None]] = []  # audited, never enforced
        self.decision = "allow"
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        # choice/output index -> text pieces: as the upstream sent them, and as released
        self._received: dict[int, list[str]] = defaultdict(list)
        self._watch_only = not side.guarded  # usage and finish reasons, no text
        self._released: dict[int, list[str]] = defaultdict(list)
        self.last: dict[str, Any] | None = None
        self._redacted = False

    @property
    def full_text(self) -> dict[int, str]:
        """What the upstream answered, per choice (output index for the Responses API)."""
        return {i: "".join(parts) for i, parts in self._received.items()}

    @property
    def released(self) -> dict[int, str]:
        """What the client was sent, per choice: the cleared, possibly redacted text."""
        return {i: "".join(parts) for i, parts in self._released.items()}

    def _observe(self, event: Event) -> None:
        if event.data is None:
            return
        if self.endpoint == MESSAGES:
            message, self.usage, reason = anthropic_sse.observe(event.data, self.usage)
            self.last = message or self.last
            if reason:
                self.finish_reasons.append(reason)
        elif self.endpoint == RESPONSES:
            if event.type == "response.created":
                self.last = event.data
        else:
            self.last = event.data
            for choice in event.data.get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reasons.append(choice["finish_reason"])
        if event.type == "response.completed":
            status = (event.data.get("response") or {}).get("status")
            self.finish_reasons.append(str(status))
        if self.endpoint != MESSAGES:
            self.usage = usage_of(event) or self.usage
        if not self._watch_only:
            for index, text in event.texts.items():
                self._received[index].append(text)

    async def _judge(self, sealed: Sealed) -> tuple[list[Outcome], dict[int, str]]:
        outcomes: list[Outcome] = []
        released: dict[int, str] = {}
        for index, text in sealed.texts.items():
            result, kept = await self.guard.check_text(
                self.side, self.policies, text, context=sealed.context.get(index, ""), choice=index
            )
            outcomes += result.outcomes
            self.shadow += result.shadow
            released[index] = kept
        return outcomes, released

    def _release(self, sealed: Sealed, released: dict[int, str]) -> list[bytes]:
        changed = {i: t for i, t in released.items() if t != sealed.texts[i]}
        self._redacted = self._redacted or bool(changed)
        for index, text in released.items():  # before the final events restate the text
            self._released[index].append(text)
        final_texts: dict[int, str] | None = None
        frames, placed = [], set()
        for event in sealed.events:
            if changed and set(event.texts) & set(changed):
                # Redacted text goes out whole in the window's first event of that choice.
                texts = {}
                for index in event.texts:
                    if index in changed:
                        texts[index] = "" if index in placed else changed[index]
                        placed.add(index)
                    else:
                        texts[index] = event.texts[index]
                frames.append(with_texts(event, self.endpoint, texts))
            elif self._redacted and self.endpoint == RESPONSES and event.type in _RESPONSES_FINAL:
                final_texts = final_texts or self.released
                frames.append(with_final_text(event, final_texts))
            else:
                frames.append(event.raw)
        return frames

    async def run(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        if self.side.stream == "passthrough":
            async for frame in self._passthrough(chunks):
                yield frame
            return
        queue: asyncio.Queue[tuple[Sealed, asyncio.Task[Any] | None] | None] = asyncio.Queue()
        producer = asyncio.ensure_future(self._produce(chunks, queue))
        try:
            while (item := await queue.get()) is not None:
                sealed, task = item
                outcomes, released = await task if task else ([], {})  # no text, no check
                self.outcomes += outcomes
                verdict = decide(outcomes, self.fail)
                self.decision = worse(self.decision, verdict)
                if verdict == "block":
                    yield end_frames(self.endpoint, self.last)
                    return
                if verdict == "error":
                    yield error_frame(
                        self.endpoint,
                        "The output guard is unavailable; the rest of this answer was withheld.",
                        "guard_unavailable",
                    )
                    return
                yield b"".join(self._release(sealed, released))  # one write per window
            await producer  # re-raises an upstream failure after everything cleared was sent
        finally:
            if not producer.done():
                producer.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if item and item[1]:
                    item[1].cancel()

    async def _produce(self, chunks: AsyncIterator[bytes], queue: asyncio.Queue) -> None:
        """Read the upstream into windows. A window is sealed when it fills, or when its
        oldest text has waited `window_ms`, so a slow stream still moves along."""
        splitter = EventSplitter()
        feed: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        reader = asyncio.ensure_future(_read_into(chunks, feed))
        loop = asyncio.get_running_loop()
        waiting_since: float | None = None

        def enqueue(sealed: Sealed | None) -> None:
            nonlocal waiting_since
            if sealed is not None:
                task = asyncio.ensure_future(self._judge(sealed)) if sealed.texts else None
                queue.put_nowait((sealed, task))
            if not self.window.waiting:
                waiting_since = None

        try:
            while True:
                timeout = None
                if waiting_since is not None and self.wait_s is not None:
                    timeout = max(0.0, waiting_since + self.wait_s - loop.time())
                try:
                    if feed.empty():
                        async with asyncio.timeout(timeout):
                            item = await feed.get()
                    else:
                        item = feed.get_nowait()
                except TimeoutError:
                    enqueue(self.window.seal_early())
                    if self.window.waiting:
                        waiting_since = loop.time()  # what stays is the hold: wait anew
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                for raw in splitter.feed(item):
                    event = parse_event(raw, self.endpoint, self.side.thinking)
                    self._observe(event)
                    if event.texts and waiting_since is None:
                        waiting_since = loop.time()
                    enqueue(self.window.push(event))
                    if not event.texts and not self.window.waiting:
                        # No unchecked text ahead of it (a role chunk, a keep-alive
                        # comment): it goes out as soon as the windows before it do.
                        enqueue(self.window.flush())
            if rest := splitter.rest():
                enqueue(self.window.push(parse_event(rest, self.endpoint, self.side.thinking)))
            enqueue(self.window.flush())
        finally:
            reader.cancel()  # a block or a gone client stops the upstream read
            queue.put_nowait(None)

    async def _passthrough(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        async for chunk in chunks:
            for raw in splitter.feed(chunk):
                # Watching only, most events (text deltas) hold nothing to note: skip parsing.
                if not self._watch_only or self.last is None or _NOTEWORTHY.search(raw):
                    self._observe(parse_event(raw, self.endpoint, self.side.thinking))
            yield chunk

    async def judge_passthrough(self) -> None:
        """After a passthrough stream: classify the whole answer; a flag can only annotate."""
        self._released = self._received
        for index, text in self.full_text.items():
            result, _ = await self.guard.check_text(self.side, self.policies, text, choice=index)
            self.outcomes += result.outcomes
            self.shadow += result.shadow
        self.decision = "annotate" if decide(self.outcomes, "open") != "allow" else "allow"


async def _read_into(chunks: AsyncIterator[bytes], feed: asyncio.Queue) -> None:
    """Move upstream chunks into a queue (waiting on a queue can time out safely; waiting
    on the upstream iterator cannot: a cancelled read would close the response)."""
    try:
        async for chunk in chunks:
            feed.put_nowait(chunk)
    except Exception as exc:
        feed.put_nowait(exc)
        return
    feed.put_nowait(None)
