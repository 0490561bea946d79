"""Streams, with I/O: the thin async driver of the stream guard, and the plain relay.

`StreamGuard.run` reads the upstream, feeds its events to the StreamMachine
(stream_machine.py, which decides everything) and executes the actions it answers:
bytes to the client, classifications as tasks (their verdicts fed back as they arrive),
clock ticks through `loop.call_at`. `relay` forwards an unguarded stream as it comes, and
still ends a broken one with an error frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from proxy.config import OutputSide
from proxy.guard.engine import Guard, Outcome, SideResult, decide
from proxy.guard.stream_machine import (
    ENDINGS,
    Action,
    Classify,
    End,
    Judged,
    Release,
    StreamMachine,
    WakeAt,
    closing,
    end_frames,
    error_frame,
)
from proxy.guard.window import Sealed, Window, hold_chars
from proxy.policies import Policy
from proxy.sse import EventReader, Key, choice_of
from proxy.stream_watch import StreamWatch, Terminator
from proxy.upstream import UpstreamError

MAX_EVENT_BYTES = 16 << 20  # one upstream event (text deltas are bytes; answers, kilobytes)

__all__ = ["Relay", "Sealed", "StreamGuard", "Window", "end_frames", "error_frame", "hold_chars"]


def machine_for(
    side: OutputSide, policies: Mapping[str, Policy], endpoint: str, fail: str
) -> StreamMachine:
    detectors = tuple(sorted({d for r in side.policies for d in policies[r.id].detectors}))
    size = None if side.stream == "buffer" else side.window_chars
    window = Window(
        size, side.overlap_chars, hold_chars(detectors), detectors, first=side.first_window_chars
    )
    return StreamMachine(
        endpoint, window, mode=side.stream, fail=fail, wait_s=side.window_ms / 1000
    )


class StreamGuard:
    """Runs one streamed answer through the output side; see the module docstring."""

    def __init__(
        self,
        guard: Guard,
        side: OutputSide,
        policies: Mapping[str, Policy],
        endpoint: str,
        fail: str,
        watch: StreamWatch | None = None,
    ) -> None:
        self.guard, self.side, self.policies, self.endpoint = guard, side, policies, endpoint
        self.machine = machine_for(side, policies, endpoint, fail)
        self.watch = watch
        self.shadow: list[asyncio.Future[Outcome | None]] = []  # audited, never enforced
        self.finished = False  # the frame `run` yields now is its last

    @property
    def outcomes(self) -> list[Outcome]:
        return self.machine.outcomes

    @property
    def decision(self) -> str:
        return self.machine.decision

    @property
    def failure(self) -> str | None:
        return self.machine.failure

    @property
    def full_text(self) -> dict[Key, str]:
        """What the upstream answered, per channel."""
        return self.machine.texts(self.machine.received)

    @property
    def released(self) -> dict[Key, str]:
        """What the client was sent, per channel: the cleared, possibly redacted text."""
        return self.machine.texts(self.machine.released_parts)

    def label(self, key: Key) -> str:
        """How a channel is named in the audit's content."""
        if isinstance(key, int) and key not in self.machine.tools:
            return f"choice {key}" if key else ""
        tool = self.machine.tools.get(key)
        named = isinstance(key, tuple) and key[1] in ("refusal", "reasoning", "summary", "audio")
        kind = key[1] if named else "tool"  # type: ignore[index]
        return f"{kind} {tool}" if tool else kind

    async def run(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        machine = self.machine
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        judging: dict[int, asyncio.Task[Judged]] = {}
        timer: list[asyncio.TimerHandle] = []

        def apply(actions: list[Action]) -> None:
            data = []
            for action in actions:
                kind = type(action)
                if kind is Release:
                    data.append(action.data)  # type: ignore[union-attr]
                elif kind is Classify:
                    self._classify(action, judging, apply)  # type: ignore[arg-type]
                elif kind is WakeAt:
                    if timer:
                        timer.pop().cancel()
                    timer.append(loop.call_at(action.at, tick))  # type: ignore[union-attr]
                elif kind is End:
                    data.append(action.data)  # type: ignore[union-attr]
            if data:
                out.put_nowait(b"".join(data))
            if machine.ended is not None:
                out.put_nowait(None)

        def tick() -> None:
            timer.clear()
            apply(machine.tick(loop.time()))

        async def read() -> None:
            reader, watch = EventReader(self.endpoint, self.side.thinking), self.watch
            try:
                async for chunk in chunks:
                    events = reader.feed(chunk)
                    if reader.held > MAX_EVENT_BYTES:  # no window could hold it anyway
                        raise UpstreamError(502, "upstream_dropped", "An event never ended.")
                    if watch is not None:
                        watch.events(events)
                    apply(machine.events(events, loop.time()))
                    if machine.ended is not None:
                        return
                if (rest := reader.rest()) is not None:
                    if watch is not None:
                        watch.event(rest)
                    apply(machine.event(rest, loop.time()))
                apply(machine.upstream_end())
            except UpstreamError as exc:
                apply(machine.upstream_error(exc.code))

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(
            lambda task: task.cancelled() or task.exception() is None or out.put_nowait(None)
        )
        try:
            while True:
                # What is ready goes out in one piece (verdicts often arrive together).
                frames, item = [], await out.get()
                while item is not None:
                    frames.append(item)
                    if out.empty():
                        break
                    item = out.get_nowait()
                failed = reader.done() and not reader.cancelled() and reader.exception()
                self.finished = item is None and not failed  # this frame is the last
                if frames:
                    yield b"".join(frames) if len(frames) > 1 else frames[0]
                if item is None:
                    break
            if failed:
                raise reader.exception()  # type: ignore[misc]
        finally:
            reader.cancel()  # a block or a gone client stops the upstream read
            for task in judging.values():
                task.cancel()
            for handle in timer:
                handle.cancel()

    def _classify(
        self,
        action: Classify,
        judging: dict[int, asyncio.Task[Judged]],
        apply: Callable[[list[Action]], None],
    ) -> None:
        task = asyncio.ensure_future(self._judge(action))
        judging[action.seq] = task

        def done(task: asyncio.Task[Judged]) -> None:
            judging.pop(action.seq, None)
            if task.cancelled():
                return
            apply(self.machine.verdict(action.seq, None if task.exception() else task.result()))

        task.add_done_callback(done)

    async def _judge(self, action: Classify) -> Judged:
        """Every channel of a window at once (each after its own context)."""
        keys = list(action.texts)
        checks = [
            self.guard.check_text(
                self.side,
                self.policies,
                action.texts[key],
                context=action.context.get(key, ""),
                choice=choice_of(key),
            )
            for key in keys
        ]
        # one channel (the usual case) needs no gathering task
        results = [await checks[0]] if len(checks) == 1 else await asyncio.gather(*checks)
        outcomes: list[Outcome] = []
        released: dict[Key, str] = {}
        for key, (result, kept) in zip(keys, results, strict=True):
            self._take(result, action.tools.get(key), outcomes)
            released[key] = kept
        return Judged(tuple(outcomes), released)

    def _take(self, result: SideResult, tool: str | None, into: list[Outcome]) -> None:
        if tool is not None:
            for outcome in result.outcomes:
                outcome.tool = tool
        into += result.outcomes
        self.shadow += result.shadow

    async def judge_passthrough(self) -> None:
        """After a passthrough stream: classify the whole answer; a flag can only annotate."""
        machine = self.machine
        machine.released_parts = machine.received
        outcomes: list[Outcome] = []
        for key, text in self.full_text.items():
            result, _ = await self.guard.check_text(
                self.side, self.policies, text, choice=choice_of(key)
            )
            self._take(result, machine.tools.get(key), outcomes)
        machine.outcomes += outcomes
        machine.decision = "annotate" if decide(outcomes, "open") != "allow" else "allow"


class Relay:
    """An unguarded stream, forwarded chunk by chunk as it comes; a stream the upstream
    breaks, lets stall or ends without its terminator ends in an error frame."""

    def __init__(self, endpoint: str, watch: StreamWatch | None = None) -> None:
        self.endpoint, self.watch = endpoint, watch
        self.failure: str | None = None
        self.finished = False  # never known before the upstream's end

    async def run(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        ends, watch = Terminator(self.endpoint), self.watch
        try:
            async for chunk in chunks:
                ends.see(chunk)
                if watch is not None:
                    watch.chunk(chunk)
                yield chunk
        except UpstreamError as exc:
            if ends.terminated:
                return
            self.failure = (
                "upstream_timeout" if exc.code == "upstream_timeout" else "upstream_dropped"
            )
        else:
            if ends.terminated:
                return
            self.failure = "upstream_dropped"
        yield error_frame(self.endpoint, ENDINGS[self.failure], self.failure) + closing(
            self.endpoint
        )
