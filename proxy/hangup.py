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


class _Request:
    __slots__ = ("_send", "_task", "_watcher", "fired", "since")

    def __init__(self, send: Sender, task: asyncio.Task[Any], since: float) -> None:
        self._send, self._task, self.since = send, task, since
        self._watcher: asyncio.Future[None] | None = None
        self.fired = False

    def watch(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        await self._send.disconnected()
        if not self._send.started:  # once it started, the streaming code handles a hang-up
            self.fired = True
            self._task.cancel()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


class HangUps:
    """One sweeper task (alive only while requests are) arms watchers for slow requests."""

    def __init__(self) -> None:
        self._running: dict[int, _Request] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def run(self, send: Sender, work: Coroutine[Any, Any, None]) -> None:
        """Await `work` in this task; ClientDisconnected if the client went before the
        answer started (the work was cancelled: its calls were abandoned)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        request = _Request(send, task, loop.time())
        key = id(request)
        self._running[key] = request
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await work
        except asyncio.CancelledError:
            if not request.fired:
                raise
            task.uncancel()
            raise ClientDisconnected() from None
        finally:
            del self._running[key]
            request.stop()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._running:
                await asyncio.sleep(SWEEP_S)
                due = loop.time() - SWEEP_S
                for request in list(self._running.values()):
                    if request.since <= due:
                        request.watch()
        finally:
            self._sweeper = None
