"""Cancel a request's work when its client hangs up before the answer started.

While the input guard runs or the upstream has not answered, nobody reads the client's
connection, so a client that gave up goes unnoticed: the classifier and the upstream keep
working (and billing) for nobody. Watching costs a task per request, so only requests
still running after one sweep interval (`SWEEP_S`) get a watcher; most unguarded requests
are answered sooner and cost a dict entry. A client gone earlier is found at once when
its watcher starts (the server already knows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from proxy.shaping import ClientDisconnected, Sender

SWEEP_S = 0.1


class HangUps:
    """One sweeper task (alive only while requests are) arms watchers for slow requests."""

    def __init__(self) -> None:
        # request task -> (its sender, when it started); a task runs one request at a time
        self._running: dict[asyncio.Task[Any], tuple[Sender, float]] = {}
        self._watchers: dict[asyncio.Task[Any], asyncio.Task[None]] = {}
        self._fired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def run(self, send: Sender, work: Coroutine[Any, Any, None]) -> None:
        """Await `work` in this task; ClientDisconnected if the client went before the
        answer started (the work was cancelled: its calls were abandoned)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._running[task] = (send, loop.time())
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await work
        except asyncio.CancelledError:
            if task not in self._fired:
                raise
            task.uncancel()
            raise ClientDisconnected() from None
        finally:
            del self._running[task]
            if self._watchers:
                if (watcher := self._watchers.pop(task, None)) is not None:
                    watcher.cancel()
                self._fired.discard(task)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._running:
                await asyncio.sleep(SWEEP_S)
                due = loop.time() - SWEEP_S
                for task, (send, since) in list(self._running.items()):
                    if since <= due and task not in self._watchers:
                        self._watchers[task] = loop.create_task(self._watch(task, send))
        finally:
            self._sweeper = None

    async def _watch(self, task: asyncio.Task[Any], send: Sender) -> None:
        await send.disconnected()
        if not send.started:  # once the answer started, the streaming code handles a hang-up
            self._fired.add(task)
            task.cancel()
