"""The line between the fleet supervisor and each worker: request/reply over a socket pair.

A message is a 4-byte big-endian length and a pickled dict. Requests carry `id` and `op`;
replies carry `re` (the request's id) and the result. Either end may call the other at
any time: a worker asks the supervisor to gather metrics while the supervisor asks it for
its snapshot. pickle is safe here: both ends are this program, on a private socket pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("proxy.fleet")

_HEADER = struct.Struct(">I")
CALL_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Line:
    """One end: `call(op, **args)` awaits the other end's reply; `handler` answers calls."""

    def __init__(self, sock: socket.socket, handler: Handler, name: str) -> None:
        self._sock = sock
        self._handler = handler
        self.name = name
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self._sock.setblocking(False)
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def call(self, op: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """The other end's answer; raises ConnectionError (gone) or TimeoutError."""
        if self._writer is None or self.closed.is_set():
            raise ConnectionError(f"{self.name}: line closed")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            self._send({"id": rid, "op": op, **args})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(rid, None)

    def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                message = pickle.loads(await reader.readexactly(_HEADER.unpack(header)[0]))
                if "re" in message:
                    future = self._waiting.get(message["re"])
                    if future is not None and not future.done():
                        future.set_result(message.get("result"))
                else:
                    task = asyncio.create_task(self._answer(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.name}: line closed"))

    async def _answer(self, message: dict[str, Any]) -> None:
        try:
            result = await self._handler(message)
        except Exception:
            log.exception("%s: %r failed", self.name, message.get("op"))
            result = None
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self._send({"re": message["id"], "result": result})

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self.closed.set()
