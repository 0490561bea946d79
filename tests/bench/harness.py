"""What the scenarios share: run settings, a set of servers, gateway configs, measuring."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.procs import ROOT, Server, run_loadgen

KEY = "sk-bench-tenant-key"
CHAT = "/v1/chat/completions"
POLICIES_DIR = ROOT / "policies"
INPUT_POLICY = "prompt-injection"  # block, scope: conversation
OUTPUT_POLICY = "violence"  # block, no detectors (so stream windows hold nothing back)


@dataclass(frozen=True)
class Settings:
    quick: bool
    duration: float  # measured window of one closed-loop run, seconds
    warmup: float
    rounds: int  # interleaved repeats where a ratio matters; the median run is reported
    log_dir: Path

    @classmethod
    def make(cls, quick: bool, log_dir: Path) -> Settings:
        if quick:
            return cls(True, 2.0, 0.5, 1, log_dir)
        return cls(False, 5.0, 1.0, 3, log_dir)


@dataclass
class Scenario:
    """A scenario's outcome: printable tables, pass/fail checks and the raw numbers."""

    name: str
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def check(self, name: str, value: str, target: str, ok: bool | None) -> None:
        self.checks.append({"check": name, "value": value, "target": target, "ok": ok})


class Cluster:
    """Servers started for one scenario, all stopped (in reverse order) when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def start(self, name: str, module: str, *args: str, **env: str) -> Server:
        server = Server(name, f"tests.bench.{module}", list(args), dict(env))
        self.servers.append(server)
        return server.start(self.log_dir)

    def upstream(self, name: str = "upstream", **options: Any) -> Server:
        args = []
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        return self.start(name, "upstream", *args)

    def gateway(self, name: str, config: dict[str, Any], **env: str) -> Server:
        path = self.log_dir / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        return self.start(name, "gateway_server", "--config", str(path), **env)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@contextmanager
def cluster(settings: Settings) -> Iterator[Cluster]:
    group = Cluster(settings.log_dir)
    try:
        yield group
    finally:
        group.stop()


def gateway_config(
    upstream: Server,
    tmp: Path,
    *,
    routes: dict[str, dict[str, Any]] | None = None,
    classifier: Server | None = None,
    audit: bool = False,
    traces: str = "none",
) -> dict[str, Any]:
    """One tenant (KEY); model `<route>-...` picks that route, any other model `open`."""
    routes = {"open": {"upstream": "main"}, **(routes or {})}
    globs = {f"{name}-*": name for name in routes if name != "open"}
    return {
        "upstreams": {"main": {"base_url": upstream.url + "/v1", "api_key": "sk-upstream"}},
        "classifier": {
            "base_url": (classifier.url if classifier else "http://127.0.0.1:9") + "/v1",
            "timeout_s": 20,
        },
        "policies_dir": str(POLICIES_DIR),
        "tenants": {"bench": {"keys": [KEY], "routes": {**globs, "*": "open"}}},
        "routes": routes,
        "audit": {"enabled": audit, "path": str(tmp / "audit.db"), "content": "redacted"},
        "telemetry": {"traces": traces, "metrics": "prometheus"},
    }


def guarded_route(
    *, input_mode: str = "sequential", output: bool = True, stream: str = "window"
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "upstream": "main",
        "input": {"policies": [INPUT_POLICY], "mode": input_mode},
        "fail": "closed",
    }
    if output:
        route["output"] = {"policies": [OUTPUT_POLICY], "stream": stream}
    return route


def closed(
    settings: Settings,
    server: Server,
    concurrency: int,
    *,
    watch: dict[str, Server] | None = None,
    key: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """One closed-loop run against `server`'s chat endpoint; CPU % of `watch` (default:
    `server` itself) over the window."""
    watched = watch if watch is not None else {"server": server}
    options.setdefault("duration", settings.duration)
    options.setdefault("warmup", settings.warmup)
    return run_loadgen(
        "closed",
        server.url + CHAT,
        watch={n: s.pid for n, s in watched.items()},
        concurrency=concurrency,
        key=KEY if key else "none",
        timeout=options["duration"] + options["warmup"] + 90,
        **options,
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its latencies with it), all throughputs kept."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rps_runs"] = [r["rps"] for r in runs]
    chosen["rps_median"] = round(statistics.median(r["rps"] for r in runs), 1)
    return chosen


def cpu(run: dict[str, Any], name: str = "server") -> str:
    value = (run.get("server_cpu_pct") or {}).get(name)
    return "-" if value is None else f"{value:.0f}"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def rps(run: dict[str, Any]) -> str:
    text = f"{run.get('rps_median', run['rps']):,.0f}"
    errors = run.get("not_ok", 0) + sum((run.get("errors") or {}).values())
    return text + (f" ({errors} errors)" if errors else "")


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0
