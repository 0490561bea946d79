"""The fleet supervisor: `server.workers: N` as one server.

The main process binds the port, loads and checks the config and its policies once, and
spawns N worker processes (proxy.fleet.worker) that share the listening socket. It is
the one place that answers for the whole server:

- reload (SIGHUP to this process, or `POST /admin/reload` / SIGHUP on any worker): the
  new set is loaded and checked here, once; a broken one is reported once and every
  worker keeps the current set; a good one is sent to every worker, and the reload
  answers after each has swapped it in.
- `/metrics`: the worker that takes the scrape asks here, and this process sums every
  worker's snapshot (proxy.metrics.merge). Nothing is shared on the request path, so a
  request still records into plain in-process cells (~0.2 us); a scrape costs one
  round trip per worker. A worker that dies is restarted, and the counters of its last
  snapshot are kept so totals do not go back (increments after that snapshot are lost).
- `/readyz`: ready when every worker is, serving the same set.

SIGTERM or SIGINT stops the workers gracefully (each drains its requests and its audit
recorder) and then this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn
from uvicorn._subprocess import spawn

from proxy.config import ConfigError
from proxy.fleet.wire import Line
from proxy.fleet.worker import run_worker
from proxy.gateway import describe_change, load_set, set_id
from proxy.metrics import Snapshot, merge
from proxy.policies import PolicyError

log = logging.getLogger("proxy.fleet")

STOP_TIMEOUT_S = 90.0  # a worker's graceful drain (30 s) plus its recorder's
WATCH_S = 0.2
CRASH_LOOP_S = 5.0  # a worker that dies sooner after its start is restarted after a pause


@dataclass
class Worker:
    index: int
    process: SpawnProcess
    line: Line
    last: Snapshot = field(default_factory=dict)  # from the latest scrape
    gauges: frozenset[str] = frozenset()
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self, config_path: str, workers: int, options: dict[str, Any], sock: socket.socket
    ) -> None:
        self.path = config_path
        self.count = workers
        self.options = options
        self.sock = sock
        self.config, self.policies = load_set(config_path)
        self._blob = pickle.dumps((self.config, self.policies))
        self.workers: dict[int, Worker] = {}
        self.retired: Snapshot = {}  # counters of workers that died
        self._reloading = asyncio.Lock()
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        for index in range(self.count):
            await self._spawn(index)
        log.info("fleet supervisor %d serving with %d workers", os.getpid(), self.count)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WATCH_S)
            for worker in list(self.workers.values()):
                if not worker.process.is_alive() and not self._stopping.is_set():
                    await self._replace(worker)
        await self._stop_all()
        return 0

    async def _spawn(self, index: int) -> None:
        mine, theirs = socket.socketpair()
        process = spawn.Process(
            target=run_worker,
            kwargs={
                "index": index,
                "link": theirs,
                "the_set": self._blob,
                "options": self.options,
                "sockets": [self.sock],
            },
            name=f"safeguard-worker-{index}",
        )
        process.start()
        theirs.close()
        line = Line(mine, lambda message: self._answer(message), f"supervisor/{index}")
        await line.start()
        self.workers[index] = Worker(index, process, line)

    async def _replace(self, worker: Worker) -> None:
        log.error(
            "worker %d (pid %s) exited with code %s; starting a new one",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
        )
        worker.line.close()
        kept = {n: rows for n, rows in worker.last.items() if n not in worker.gauges}
        self.retired = merge([self.retired, kept])
        if time.monotonic() - worker.started < CRASH_LOOP_S:  # dying at start: do not spin
            await asyncio.sleep(CRASH_LOOP_S / 5)
        await self._spawn(worker.index)

    async def _stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for worker in self.workers.values():
            await asyncio.to_thread(worker.process.join, STOP_TIMEOUT_S)
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                await asyncio.to_thread(worker.process.join)
            worker.line.close()

    # -- what the workers ask --------------------------------------------------------------

    async def _answer(self, message: dict[str, Any]) -> Any:
        op = message["op"]
        if op == "reload":
            return await self.reload()
        if op == "metrics":
            return await self.metrics()
        if op == "ready":
            return await self.ready()
        raise ValueError(f"unknown op {op!r}")

    async def reload(self) -> dict[str, Any]:
        """Load and check the set once; send a good one to every worker, keep the current
        one everywhere otherwise (one error line, here)."""
        async with self._reloading:
            try:
                config, policies = await asyncio.to_thread(load_set, self.path, self.config)
            except (ConfigError, PolicyError) as exc:
                log.error(
                    "reload failed, every worker keeps the previous config and policies: %s", exc
                )
                return {"ok": False, "detail": str(exc)}
            detail = describe_change(self.policies, policies)
            self._blob = pickle.dumps((config, policies))  # what a restarted worker gets
            self.config, self.policies = config, policies
            results = await asyncio.gather(
                *(w.line.call("apply", set=self._blob) for w in self.workers.values()),
                return_exceptions=True,
            )
            missed = sum(isinstance(r, BaseException) for r in results)
            if missed:  # a worker that is restarting gets the new set when it starts
                log.warning("%d workers did not confirm the reload", missed)
            log.info("reloaded in %d workers: %s", len(results) - missed, detail)
            return {"ok": True, "detail": detail}

    async def _each(self, op: str) -> list[tuple[Worker, Any]]:
        workers = [w for w in self.workers.values() if w.process.is_alive()]
        results = await asyncio.gather(
            *(w.line.call(op, timeout=5.0) for w in workers), return_exceptions=True
        )
        return list(zip(workers, results, strict=True))

    async def metrics(self) -> Snapshot:
        snapshots = [self.retired]
        for worker, result in await self._each("snapshot"):
            if isinstance(result, dict):
                worker.last = result["rows"]
                worker.gauges = frozenset(result["gauges"])
                snapshots.append(result["rows"])
        return merge(snapshots)

    async def ready(self) -> dict[str, Any]:
        answers = await self._each("ready")
        workers: dict[str, Any] = {}
        checks: dict[str, Any] = {}
        ok = len(answers) == self.count
        for worker, result in answers:
            if not isinstance(result, dict):
                workers[str(worker.index)] = {"ready": False, "detail": "not answering"}
                ok = False
                continue
            workers[str(worker.index)] = {
                "ready": result["ok"],
                "set": result["set"],
                "pid": result["pid"],
                "served": result["served"],  # requests answered: is the load spread?
            }
            if not checks or not result["ok"]:
                checks = dict(result["checks"])
            ok = ok and result["ok"]
        sets = {w.get("set") for w in workers.values()}
        if len(sets) > 1:
            ok = False
        checks["workers"] = workers
        checks["set"] = set_id(self.config, self.policies)
        return {"ok": ok, "checks": checks}


def serve_fleet(config_path: str, workers: int, options: dict[str, Any]) -> int:
    """`serve` with workers > 1: bind, supervise, return when stopped."""
    bind = uvicorn.Config("proxy.app:app_from_env", **options)
    sock = bind.bind_socket()
    try:
        supervisor = Supervisor(os.path.abspath(config_path), workers, options, sock)
        return asyncio.run(supervisor.run())
    finally:
        sock.close()
