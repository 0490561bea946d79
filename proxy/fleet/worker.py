"""A fleet worker: one uvicorn server process, serving the set its supervisor hands it.

`run_worker` is the spawned process's entry point. The worker never reads the config or
the policies itself: the supervisor checked that set once and sends it, at start and on
every reload, so every worker serves the same one. Its `WorkerLink` answers the
supervisor (apply a set, a metrics snapshot, readiness) and turns what must be answered
for the whole server (`/metrics`, `/readyz`, `POST /admin/reload`, SIGHUP) into a call
to the supervisor, which asks every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
from collections.abc import Mapping
from typing import Any

import uvicorn

from proxy.config import Config
from proxy.fleet.wire import Line
from proxy.metrics import Snapshot
from proxy.policies import Policy

log = logging.getLogger("proxy.fleet")


class WorkerLink:
    """The worker's end of its line to the supervisor (see Gateway.link)."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self._sock = sock
        self.index = index
        self._line: Line | None = None
        self._gateway: Any = None

    async def start(self, gateway: Any) -> None:
        self._gateway = gateway
        self._line = Line(self._sock, self._answer, f"worker {self.index}")
        await self._line.start()
        gateway.metrics.gather = self.metrics
        asyncio.get_running_loop().create_task(self._watch_supervisor(self._line))

    async def _watch_supervisor(self, line: Line) -> None:
        await line.closed.wait()
        if self._line is line:  # the supervisor is gone: stop serving, gracefully
            log.error("worker %d lost its supervisor; shutting down", self.index)
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            line.close()

    async def _answer(self, message: dict[str, Any]) -> Any:
        gateway = self._gateway
        op = message["op"]
        if op == "apply":
            config, policies = pickle.loads(message["set"])
            return gateway.apply(config, policies)
        if op == "snapshot":
            registry = gateway.metrics.registry
            gauges = [m.name for m in registry.metrics.values() if m.kind == "gauge"]
            return {"rows": registry.snapshot(), "gauges": gauges}
        if op == "ready":
            ok, checks = await gateway.ready_local()
            served = sum(cell[0] for _, cell in gateway.metrics.requests.snapshot())
            return {
                "ok": ok,
                "checks": checks,
                "set": gateway.set_id,
                "pid": os.getpid(),
                "served": int(served),
            }
        raise ValueError(f"unknown op {op!r}")

    async def _call(self, op: str, **args: Any) -> Any:
        if self._line is None:
            raise ConnectionError("not linked")
        return await self._line.call(op, **args)

    async def reload(self) -> tuple[bool, str]:
        try:
            result = await self._call("reload", timeout=60)
        except (ConnectionError, TimeoutError) as exc:
            return False, f"the fleet supervisor did not answer ({type(exc).__name__})"
        return result["ok"], result["detail"]

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        try:
            result = await self._call("ready")
        except (ConnectionError, TimeoutError) as exc:
            return False, {"workers": f"the fleet supervisor did not answer ({exc!r})"}
        return result["ok"], result["checks"]

    async def metrics(self) -> Snapshot:
        try:
            return await self._call("metrics")
        except (ConnectionError, TimeoutError):  # this worker's own numbers, at least
            return self._gateway.metrics.registry.snapshot()


def run_worker(
    *,
    index: int,
    link: socket.socket,
    the_set: bytes,
    options: dict[str, Any],
    sockets: list[socket.socket],
) -> None:
    """The spawned worker process: build the app around the set, serve until told to stop."""
    from proxy.app import build_app

    # Out of the terminal's process group: Ctrl-C reaches the supervisor, which stops each
    # worker once (a second signal would make uvicorn skip the graceful drain).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    config: Config
    policies: Mapping[str, Policy]
    config, policies = pickle.loads(the_set)
    server_config = uvicorn.Config(
        build_app(config, policies=policies, link=WorkerLink(link, index)), **options
    )
    server_config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(server_config).run(sockets=sockets)
