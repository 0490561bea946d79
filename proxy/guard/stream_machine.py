"""The output guard of one streamed answer as a sans-io state machine.

Fed parsed events, verdicts as they arrive, clock ticks and the upstream's end, it
answers with immutable actions: `Release` these bytes, `Classify` this window, `WakeAt`
(hold: tick me then), `End` (with content_filter, an error frame, or complete). It does no
I/O and reads no clock; `proxy/guard/streaming.py` executes the actions.

`window`: windows (see window.py) are classified while the upstream keeps streaming and
released strictly in order, each once its own verdict allows it. `buffer`: one window, at
the end. `passthrough`: every event goes out at once; the whole answer is judged after.
Whatever the mode, a stream the upstream ends without its terminator (or breaks, or lets
stall) ends in an error frame the SDKs raise on, after the text that cleared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Union

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.guard.engine import Outcome, decide, worse
from proxy.guard.window import Sealed, Window
from proxy.openai_api import COMPLETIONS, RESPONSES, OpenAIError
from proxy.sse import Event, Key, choice_of, restated, serialize, with_final_text, with_texts

DONE = b"data: [DONE]\n\n"
_EMPTY: Mapping[Any, Any] = MappingProxyType({})
ENDINGS = {  # why a stream ended early -> what the client is told
    "guard_unavailable": "The output guard is unavailable; the rest of this answer was withheld.",
    "upstream_dropped": "The upstream ended this stream before it was complete.",
    "upstream_timeout": "The upstream stopped sending this stream for longer than its timeout.",
}


@dataclass(frozen=True, slots=True)
class Release:
    """Send these bytes to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Classify:
    """Classify each channel's text of window `seq` (after its context); answer with
    `verdict(seq, ...)`. `tools` names the tool of tool-call channels."""

    seq: int
    texts: Mapping[Key, str]
    context: Mapping[Key, str]
    tools: Mapping[Key, str]


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Nothing to send yet: call `tick` at this time (unless an event comes first)."""

    at: float


@dataclass(frozen=True, slots=True)
class End:
    """Send `data` and stop; `reason` is complete, content_filter or an ENDINGS code."""

    data: bytes
    reason: str


Action = Union[Release, Classify, WakeAt, End]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True, slots=True)
class Judged:
    """A window's verdict: the outcomes and each channel's text as it may be released."""

    outcomes: tuple[Outcome, ...]
    released: Mapping[Key, str]


CLEAR = Judged((), _EMPTY)


def end_frames(
    endpoint: str,
    last: dict[str, Any] | None,
    reason: str = "content_filter",
    choices: set[int] | frozenset[int] = frozenset(),
) -> bytes:
    """What a client sees when forwarding stops: a final chunk per choice (those seen in
    `choices` and in `last`), then [DONE]."""
    last = last or {}
    if endpoint == MESSAGES:
        return anthropic_sse.end_frames()
    if endpoint == RESPONSES:
        response = dict(last.get("response") or {})
        response.update(status="incomplete", incomplete_details={"reason": reason}, output=[])
        return serialize(
            {"type": "response.incomplete", "response": response}, "response.incomplete"
        )
    seen = {c.get("index") for c in last.get("choices") or () if isinstance(c, dict)}
    indexes = sorted({i for i in seen if type(i) is int} | choices or {0})
    base = {
        k: last[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in last
    }
    key = "text" if endpoint == COMPLETIONS else "delta"
    empty: Any = "" if endpoint == COMPLETIONS else {}
    choices = [{"index": i, key: empty, "finish_reason": reason} for i in indexes]
    return serialize(base | {"choices": choices}) + DONE


def error_frame(endpoint: str, message: str, code: str) -> bytes:
    """An error mid-stream, in a shape the official SDKs raise on (they raise on any event
    whose data has an `error` member): the Responses API's `error` event, else OpenAI's
    error body. A Messages API stream ends with it (no [DONE])."""
    if endpoint == MESSAGES:
        return anthropic_sse.error_frame(message, code)
    if endpoint == RESPONSES:
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        body = {"type": "error", "code": code, "message": message, "param": None}
        return serialize(body | {"error": error}, "error")
    return b"data: " + OpenAIError(503, message, type="server_error", code=code).body() + b"\n\n"


def closing(endpoint: str) -> bytes:
    """What follows an error frame: [DONE], except on a Messages API stream."""
    return b"" if endpoint == MESSAGES else DONE


class StreamMachine:
    """One streamed answer's output guard; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        window: Window,
        *,
        mode: str = "window",
        fail: str = "closed",
        wait_s: float | None = None,
    ) -> None:
        self.endpoint, self.window, self.mode, self.fail = endpoint, window, mode, fail
        self.wait_s = wait_s if mode == "window" else None
        self.outcomes: list[Outcome] = []
        self.decision = "allow"
        self.tools: dict[Key, str] = {}
        self.received: dict[Key, list[str]] = {}  # as the upstream sent it
        self.released_parts: dict[Key, list[str]] = {}  # as the client got it
        self._last: Event | None = None  # the last chunk (Responses: its creation)
        self.choices: set[int] = set()  # every choice index seen (chat, completions)
        self.ended: End | None = None
        self._pending: deque[list[Any]] = deque()  # [seq, Sealed, Judged | None]
        self._seq = 0
        self._since: float | None = None  # when the oldest unsealed text arrived
        self._terminated = False
        self._ending: str | None = None  # the upstream is done: end once windows drain
        self._redacted = False

    # -- inputs ------------------------------------------------------------------------

    def events(self, events: list[Event], now: float) -> list[Action]:
        """Events that arrived together (one upstream read): windows are sealed after them
        all, so an upstream faster than the classifier makes few large windows."""
        actions: list[Action] = []
        for event in events:
            if self.ended is not None:
                return actions
            self._take(event, now, actions)
        if self.mode != "passthrough" and self.ended is None:
            while (more := self.window.full()) is not None:
                self._enqueue(more, actions)
        return actions

    def event(self, event: Event, now: float) -> list[Action]:
        return self.events([event], now)

    def verdict(self, seq: int, judged: Judged | None) -> list[Action]:
        """A window's verdict arrived (None: judging it failed)."""
        for entry in self._pending:
            if entry[0] == seq:
                entry[2] = judged if judged is not None else False
                break
        else:
            return []
        return self._drain()

    def tick(self, now: float) -> list[Action]:
        """Time passed: seal the text that waited `window_ms`, so a slow stream moves."""
        if self.ended is not None or self._since is None or self.wait_s is None:
            return []
        due = self._since + self.wait_s
        if now < due:
            return [WakeAt(due)]
        actions: list[Action] = []
        self._enqueue(self.window.seal_early(), actions)
        if self.window.waiting:  # what stays is the hold: wait anew
            self._since = now
            actions.append(WakeAt(now + self.wait_s))
        return actions

    def upstream_end(self) -> list[Action]:
        """The upstream body ended; without a terminator, that is a dropped stream."""
        return self._finish("complete" if self._terminated else "upstream_dropped")

    def upstream_error(self, code: str) -> list[Action]:
        """Reading the upstream failed (`upstream_timeout`, or the connection broke)."""
        if self._terminated:
            return self._finish("complete")
        return self._finish(
            "upstream_timeout" if code == "upstream_timeout" else "upstream_dropped"
        )

    # -- results -----------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the stream ended early for a reason other than a verdict, if it did."""
        reason = self.ended.reason if self.ended else None
        return reason if reason in ENDINGS else None

    @property
    def last(self) -> dict[str, Any] | None:
        """The last chunk's data (Responses: the response.created event's)."""
        return self._last.data if self._last is not None else None

    def texts(self, parts: Mapping[Key, list[str]]) -> dict[Key, str]:
        return {key: "".join(p) for key, p in parts.items()}

    # -- inside --------------------------------------------------------------------------

    def _observe(self, event: Event) -> Event:
        if event.data is not None and (
            self.endpoint != RESPONSES or event.type == "response.created"
        ):
            self._last = event
        if event.terminal:
            self._terminated = True
        if event.names:
            self.tools.update(event.names)
        if event.finals and self.mode != "passthrough":
            # A restated text that differs from what was streamed (or was never streamed,
            # e.g. tool arguments sent only whole) is guarded as this event's own text.
            extra = {}
            for key, text in event.finals.items():
                seen = "".join(self.received.get(key, ()))
                if text != seen:
                    extra[key] = text[len(seen) :] if text.startswith(seen) else text
            if extra:
                event = event.with_texts({**event.texts, **extra})
        return event

    def _take(self, event: Event, now: float, actions: list[Action]) -> None:
        """Note an event, then send it on (passthrough) or put it in the window."""
        if event.plain:  # the bulk: a text delta and nothing else
            if self.endpoint != RESPONSES:
                self._last = event
        elif event.names or event.finals or event.terminal or self.endpoint == RESPONSES:
            event = self._observe(event)
        elif event.data is not None:  # a chunk with no text
            self._last = event
        texts = event.texts
        received = self.received
        for key, text in texts.items():
            if (parts := received.get(key)) is not None:
                parts.append(text)
            else:
                received[key] = [text]
                self.choices.add(choice_of(key))
        if self.mode == "passthrough":
            actions.append(Release(event.raw))
        elif texts:
            if self._since is None and self.wait_s is not None:
                self._since = now
                actions.append(WakeAt(now + self.wait_s))
            self.window.push(event, seal=False)
        elif not event.garbled:  # not JSON: no SDK could read it, and no guard either
            self.window.push(event, seal=False)
            if not self.window.waiting:
                # No unchecked text ahead of it (a role chunk, a keep-alive comment): it
                # goes out as soon as the windows before it do.
                self._enqueue(self.window.flush(), actions)

    def _enqueue(self, sealed: Sealed | None, actions: list[Action]) -> None:
        if sealed is None:
            return
        if not self.window.waiting:
            self._since = None
        seq = self._seq = self._seq + 1
        if sealed.texts:
            self._pending.append([seq, sealed, None])
            tools = {k: self.tools[k] for k in sealed.texts if k in self.tools}
            actions.append(
                Classify(
                    seq,
                    MappingProxyType(sealed.texts),
                    MappingProxyType(sealed.context),
                    MappingProxyType(tools) if tools else _EMPTY,
                )
            )
        else:
            self._pending.append([seq, sealed, CLEAR])
        actions += self._drain()

    def _finish(self, reason: str) -> list[Action]:
        if self.ended is not None:
            return []
        self._ending = reason
        if self.mode == "passthrough":
            return self._drain()
        actions: list[Action] = []
        self._enqueue(self.window.flush(), actions)  # what is left is checked, then sent
        if not self._pending:
            actions += self._drain()
        return actions

    def _drain(self) -> list[Action]:
        """Release the windows at the head whose verdicts are in; end when due."""
        actions: list[Action] = []
        pending = self._pending
        while pending and pending[0][2] is not None:
            _, sealed, judged = pending.popleft()
            if judged is False:
                return self._end(self._failed("guard_unavailable"), "guard_unavailable", actions)
            if judged.outcomes:
                self.outcomes += judged.outcomes
                verdict = decide(judged.outcomes, self.fail)
                self.decision = worse(self.decision, verdict)
                if verdict == "block":
                    frames = end_frames(self.endpoint, self.last, choices=self.choices)
                    return self._end(frames, "content_filter", actions)
                if verdict == "error":
                    frames = self._failed("guard_unavailable")
                    return self._end(frames, "guard_unavailable", actions)
            if data := self._release(sealed, judged.released):
                actions.append(Release(data))
        if self._ending is not None and not pending and self.window.empty:
            reason = self._ending
            return self._end(b"" if reason == "complete" else self._failed(reason), reason, actions)
        return actions

    def _failed(self, code: str) -> bytes:
        return error_frame(self.endpoint, ENDINGS[code], code) + closing(self.endpoint)

    def _end(self, data: bytes, reason: str, actions: list[Action]) -> list[Action]:
        self.ended = End(data, reason)
        self._pending.clear()
        actions.append(self.ended)
        return actions

    def _release(self, sealed: Sealed, released: Mapping[Key, str]) -> bytes:
        changed = {k: t for k, t in released.items() if t != sealed.texts.get(k)}
        self._redacted = self._redacted or bool(changed)
        parts = self.released_parts
        for key, text in (released or sealed.texts).items():  # before finals restate it
            if key in parts:
                parts[key].append(text)
            else:
                parts[key] = [text]
        frames, placed = [], set()
        for event in sealed.events:
            if event.finishing and self.outcomes:
                data = restated(event, self.texts(parts)) if self._redacted else None
                frames.append(self._with_results(event, data))
            elif event.finals and self._redacted:
                frames.append(with_final_text(event, self.texts(parts)))
            elif changed and not changed.keys().isdisjoint(event.texts):
                # Redacted text goes out whole in the window's first event of its channel.
                texts = {}
                for key in event.texts:
                    if key in changed:
                        texts[key] = "" if key in placed else changed[key]
                        placed.add(key)
                    else:
                        texts[key] = event.texts[key]
                frames.append(with_texts(event, self.endpoint, texts))
            else:
                frames.append(event.raw)
        return b"".join(frames)

    def _with_results(self, event: Event, data: dict[str, Any] | None) -> bytes:
        """Azure-style `content_filter_results` (the output verdict) on a closing event: per
        choice on a chunk's finishing choices, on the response for `response.completed`."""
        assert event.data is not None
        data = data or dict(event.data)
        if self.endpoint == RESPONSES and isinstance(data.get("response"), dict):
            data["response"] = data["response"] | {"content_filter_results": self._results(None)}
        else:
            data["choices"] = [
                c | {"content_filter_results": self._results(c.get("index"))}
                if isinstance(c, dict) and c.get("finish_reason")
                else c
                for c in data["choices"]
            ]
        return serialize(data, event.name)

    def _results(self, choice: Any) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for outcome in self.outcomes:
            if outcome.verdict.error or (choice is not None and outcome.choice != choice):
                continue
            result = outcome.filter_result()
            seen = results.get(outcome.policy.id)
            if seen is None or (result["detected"] and not seen["detected"]):
                results[outcome.policy.id] = result
        return results
