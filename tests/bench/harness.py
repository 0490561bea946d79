"""What the scenarios share: run settings, a set of servers, gateway configs, measuring."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterator
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
            return cls(True, 1.0, 0.3, 2, log_dir)
        return cls(False, 2.0, 0.4, 5, log_dir)


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


def interleaved(
    plan: dict[str, Callable[[], dict[str, Any]]], rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Run every measurement once per round, rotating the order each round.

    The host's speed drifts by 2x within minutes on a shared 2-vCPU VM, so a comparison
    is only fair between runs made close together: ratios are taken per round (`paired`).
    """
    names = list(plan)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(plan[name]())
    return runs


def bracketed(
    reference: Callable[[], dict[str, Any]],
    plan: dict[str, Callable[[], dict[str, Any]]],
    rounds: int,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, list[float]]]:
    """Every measurement between two runs of `reference` (rotating the order each round);
    its ratio is against the mean of the two. That cancels a host speed that drifts
    steadily over the seconds a pair takes, which rotation alone only averages out.
    Returns the reference runs, each measurement's runs, and its ratios (rps)."""
    names = list(plan)
    ref_runs: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        before = reference()
        ref_runs.append(before)
        for name in names[k:] + names[:k]:
            run = plan[name]()
            after = reference()
            ref_runs.append(after)
            runs[name].append(run)
            base = (before["rps"] + after["rps"]) / 2
            ratios[name].append(run["rps"] / base if base else 0.0)
            before = after
    return ref_runs, runs, ratios


def ratio_spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of per-round values."""
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def _cpu_us(run: dict[str, Any], name: str) -> float | None:
    value = (run.get("server_cpu_pct") or {}).get(name)
    return None if value is None or not run["rps"] else value / 100 / run["rps"] * 1e6


def answered(runs: list[dict[str, Any]]) -> int:
    """Requests answered (any status) over load generator runs."""
    return sum(sum(r["statuses"].values()) for r in runs)


def summary(runs: list[dict[str, Any]], cpu_of: str = "server") -> dict[str, Any]:
    """Medians over the runs of one measurement (each figure's own median)."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    return {
        "rps": med([r["rps"] for r in runs]),
        "rps_runs": [r["rps"] for r in runs],
        "p50_ms": med([r["p50_ms"] for r in runs]),
        "p99_ms": med([r["p99_ms"] for r in runs]),
        "mean_ms": med([r["mean_ms"] for r in runs]),
        "cpu_pct": med([(r.get("server_cpu_pct") or {}).get(cpu_of) for r in runs]),
        "cpu_us_per_req": med([_cpu_us(r, cpu_of) for r in runs]),
        "client_cpu_pct": med([r["client_cpu_pct"] for r in runs]),
        "errors": sum(r.get("not_ok", 0) + sum((r.get("errors") or {}).values()) for r in runs),
        "runs": len(runs),
    }


def paired(
    a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "rps", op: str = "ratio"
) -> dict[str, float]:
    """Per-round a/b (or a-b) of one figure: median, min and max over the rounds."""
    return ratio_spread(
        [
            (x[key] / y[key] if y[key] else 0.0) if op == "ratio" else x[key] - y[key]
            for x, y in zip(a, b, strict=True)
        ]
    )


def spread(p: dict[str, float], digits: int = 2) -> str:
    """`0.62 [0.55, 0.71]`: the median of per-round values, and their min and max."""
    if p["min"] == p["max"]:
        return f"{p['median']:.{digits}f}"
    return f"{p['median']:.{digits}f} [{p['min']:.{digits}f}, {p['max']:.{digits}f}]"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def rps(s: dict[str, Any]) -> str:
    text = f"{s['rps']:,.0f}"
    return text + (f" ({s['errors']} errors)" if s["errors"] else "")
