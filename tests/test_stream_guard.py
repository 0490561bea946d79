"""proxy/guard/streaming.py's driver: how the frames the machine releases reach the client.

A stand-in judge replaces the guard engine (it clears every window at once), so these
tests see only the driver: what goes out together, and which frame is the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.config import OutputSide
from proxy.guard.engine import SideResult
from proxy.guard.streaming import StreamGuard
from proxy.openai_api import CHAT
from proxy.policies import Policy


class ClearAll:
    """Clears every window; each verdict waits for `gate` (when set) to open."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.gate: asyncio.Event | None = None

    async def check_text(
        self, side: Any, policies: Mapping[str, Policy], text: str, **_: Any
    ) -> tuple[SideResult, str]:
        self.texts.append(text)
        if self.gate is not None:
            await self.gate.wait()
        return SideResult(), text


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c1", "choices": [choice]}) + b"\n\n"


async def upstream(*reads: bytes) -> AsyncIterator[bytes]:
    for read in reads:
        yield read
        await asyncio.sleep(0)


async def frames(guard: StreamGuard, reads: list[bytes]) -> list[tuple[bytes, bool]]:
    return [(frame, guard.finished) async for frame in guard.run(upstream(*reads))]


def guard(judge: ClearAll, size: int = 16) -> StreamGuard:
    side = OutputSide(window_chars=size, first_window_chars=size, overlap_chars=0)
    return StreamGuard(judge, side, {}, CHAT, "closed")  # type: ignore[arg-type]


def test_windows_cleared_together_go_out_as_one_frame_marked_last() -> None:
    judge = ClearAll()
    pieces = [chunk(f"word{i:02d} ") for i in range(8)]  # 7 chars each: windows of 21, 21, 14
    body = b"".join(pieces) + chunk(finish="stop") + b"data: [DONE]\n\n"

    async def run() -> list[tuple[bytes, bool]]:
        judge.gate = asyncio.Event()
        g = guard(judge)
        task = asyncio.ensure_future(frames(g, [body]))
        while len(judge.texts) < 3:  # every window is being judged
            await asyncio.sleep(0)
        judge.gate.set()  # ... and all verdicts arrive at once
        return await task

    got = asyncio.run(run())
    assert len(judge.texts) == 3
    assert got == [(body, True)]  # one frame, the whole answer, known to be the last


def test_only_the_last_frame_is_marked_last() -> None:
    judge = ClearAll()
    reads = [chunk("one two three four "), chunk("five six seven eight "), b"data: [DONE]\n\n"]
    got = asyncio.run(frames(guard(judge), reads))
    assert b"".join(frame for frame, _ in got) == b"".join(reads)
    assert [last for _, last in got] == [False] * (len(got) - 1) + [True]
    assert len(got) > 1


def test_a_stream_the_upstream_drops_ends_with_its_error_frame_last() -> None:
    judge = ClearAll()
    got = asyncio.run(frames(guard(judge), [chunk("cut short here, mid-answer ")]))
    last, marked = got[-1]
    assert marked and b"upstream_dropped" in last
    assert [m for _, m in got[:-1]] == [False] * (len(got) - 1)
