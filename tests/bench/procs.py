"""Process plumbing for the orchestrator: start servers, run the load generator, watch
CPU and memory through /proc. Every wait has a deadline; every process is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (utime and stime of /proc/pid/stat),
    plus that of its live child processes (a gateway worker's audit and span recorder)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a child that has just exited
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + sum(cpu_seconds(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                children += [int(c) for c in f.read().split()]
    return children


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its live child processes (a gateway's recorder)."""
    own = 0.0
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                own = int(line.split()[1]) / 1024
                break
    return own + sum(rss_mb(child) for child in _children(pid))


@dataclass
class Server:
    """One server subprocess (`python -m tests.bench.<module>`) listening on 127.0.0.1."""

    name: str
    module: str
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    startup_s: float = 30.0
    wrapper: Sequence[str] = ()  # a command the server runs under, e.g. valgrind
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, log_dir: Path) -> Server:
        self.log_path = log_dir / f"{self.name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", self.module, *self.args],
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        line = _readline(self.proc, self.startup_s)
        if not line.startswith("PORT "):
            self.stop()
            raise BenchError(f"{self.name} did not start: {line!r}; see {self.log_path}")
        self.port = int(line.split()[1])
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited early; see {self.log_path}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise BenchError(f"{self.name} is not listening on {self.port}")

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 35.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line, or "" when none comes in time (the process is then killed)."""
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        proc.kill()
        return ""
    return result[0].decode(errors="replace").strip()


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = {name: rss_mb(pid) for name, pid in self.pids.items()}
            except OSError:
                return
            self.samples.append((time.monotonic(), sample))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self, name: str, since: float = 0.0, until: float = float("inf")) -> float | None:
        values = [s[name] for t, s in self.samples if since <= t <= until]
        return round(max(values), 1) if values else None


def run_loadgen(
    mode: str,
    url: str,
    *,
    watch: dict[str, int] | None = None,
    on_marker: Callable[[str, dict], None] | None = None,
    timeout: float = 180.0,
    **options: Any,
) -> dict[str, Any]:
    """Run `tests.bench.loadgen` and return its RESULT; CPU % of the `watch`ed processes
    over the measured window is added as `server_cpu_pct`."""
    argv = [sys.executable, "-m", "tests.bench.loadgen", mode, "--url", url]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, str(value)]
    argv += ["--lifetime-s", str(int(timeout) + 30)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    watch = watch or {}
    cpu: dict[str, float] = {}
    started: tuple[float, dict[str, float]] | None = None
    result: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            name, _, rest = line.partition(" ")
            data = json.loads(rest) if rest.startswith("{") else {}
            if name == "MEASURE":
                started = (time.monotonic(), {n: cpu_seconds(p) for n, p in watch.items()})
            elif name == "DONE" and started is not None:
                elapsed = time.monotonic() - started[0]
                for n, p in watch.items():
                    cpu[n] = round((cpu_seconds(p) - started[1][n]) / elapsed * 100, 1)
            elif name == "RESULT":
                result = data
            if on_marker is not None and name in ("MEASURE", "DONE", "ALL_OPEN"):
                on_marker(name, data)
        proc.wait(timeout=30)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    if result is None:
        stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise BenchError(f"load generator failed ({proc.returncode}): {stderr}")
    if cpu:
        result["server_cpu_pct"] = cpu
    return result
