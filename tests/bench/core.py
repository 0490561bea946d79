"""Scenarios of issues 2 and 4: pass-through cost, 1,000 open streams, audit + tracing."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.bench.harness import (
    CHAT,
    KEY,
    Scenario,
    Settings,
    closed,
    cluster,
    cpu,
    fmt,
    gateway_config,
    median_run,
    ratio,
    rps,
)
from tests.bench.procs import RssSampler, rss_mb, run_loadgen

RSS_TARGET_MB = 250.0


def core(settings: Settings) -> Scenario:
    sc = Scenario("core", "Core: pass-through forwarding (issue 2)")
    sc.notes += [
        "Zero-latency upstream (tests/bench/upstream.py, raw ASGI on uvicorn), fixed 323-byte "
        "chat completion; non-stream POST /v1/chat/completions.",
        "Gateway: one uvicorn worker (uvloop, httptools), pass-through route (no policies), "
        "metrics on (prometheus), traces off; audit off or on (SQLite, content: redacted).",
        f"c=32 rows: median of {settings.rounds} interleaved run(s) of {settings.duration:g} s; "
        f"c=1: one run. Server CPU = the measured hop (100 = one core).",
    ]
    tmp = settings.log_dir / "core"
    with cluster(settings) as cl:
        up = cl.upstream()
        fwd = cl.start("forwarder", "forwarder", "--upstream", up.url)
        gw_off = cl.gateway("gateway-audit-off", gateway_config(up, tmp / "off"))
        gw_on = cl.gateway("gateway-audit-on", gateway_config(up, tmp / "on", audit=True))
        targets = [
            ("direct", "upstream directly", up),
            ("forwarder", "minimal aiohttp forwarder", fwd),
            ("gateway", "gateway, audit off", gw_off),
            ("gateway_audit", "gateway, audit on", gw_on),
        ]
        if not settings.quick:
            httpx = cl.start("fwd-httpx", "forwarder", "--upstream", up.url, "--client", "httpx")
            targets.append(("httpx", "httpx AsyncClient forwarder (default pool)", httpx))
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {1: {}, 32: {}}
        for c, rounds in ((1, 1), (32, settings.rounds)):
            for _ in range(rounds):
                for name, _, server in targets:
                    result = closed(settings, server, c, watch={"server": server, "upstream": up})
                    runs[c].setdefault(name, []).append(result)
    best = {c: {n: median_run(r) for n, r in by.items()} for c, by in runs.items()}
    rows = []
    for c in (1, 32):
        direct, forwarder = best[c]["direct"], best[c]["forwarder"]
        for name, label, _ in targets:
            run = best[c][name]
            rows.append(
                [
                    label,
                    c,
                    rps(run),
                    fmt(run["p50_ms"]),
                    fmt(run["p99_ms"]),
                    fmt(run["p50_ms"] - direct["p50_ms"]) if name != "direct" else "-",
                    fmt(ratio(run["rps_median"], forwarder["rps_median"])),
                    cpu(run),
                    f"{run['client_cpu_pct']:.0f}",
                ]
            )
    sc.table(
        "Pass-through forwarding",
        ["target", "c", "req/s", "p50 ms", "p99 ms", "p50 over direct, ms", "req/s vs forwarder",
         "server CPU %", "client CPU %"],
        rows,
    )  # fmt: skip
    for name, what in (("gateway", "audit off"), ("gateway_audit", "audit on")):
        r = ratio(best[32][name]["rps_median"], best[32]["forwarder"]["rps_median"])
        sc.check(f"gateway/forwarder req/s at c=32 ({what})", fmt(r), ">= 0.50", r >= 0.5)
        added = best[1][name]["p50_ms"] - best[1]["direct"]["p50_ms"]
        sc.check(
            f"gateway p50 added over direct at c=1 ({what})",
            f"{added:.2f} ms",
            "<= 1 ms",
            added <= 1.0,
        )
    sc.raw = {"runs": runs}
    return sc


def _stream_rss(
    settings: Settings, server: Any, watch: dict[str, int], n: int, chunks: int
) -> dict[str, Any]:
    """Open n streams through `server`, sampling RSS; baseline after a short warm-up."""
    closed(settings, server, 8, duration=1.0, warmup=0.3, watch={})
    baseline = rss_mb(server.pid)
    marks: dict[str, float] = {}
    with RssSampler(watch) as sampler:
        result = run_loadgen(
            "streams",
            server.url + CHAT,
            key=KEY,
            streams=n,
            on_marker=lambda name, _: marks.setdefault(name, time.monotonic()),
            request_timeout=chunks + 60,
            timeout=chunks + 120,
        )
    name = next(iter(watch))
    open_peak = sampler.peak(name, marks.get("ALL_OPEN", 0.0), marks.get("DONE", float("inf")))
    result.update(
        baseline_rss_mb=round(baseline, 1),
        open_rss_mb=open_peak,
        peak_rss_mb=sampler.peak(name),
        after_rss_mb=round(rss_mb(server.pid), 1),
        rss_series=[(round(t - sampler.samples[0][0], 2), s[name]) for t, s in sampler.samples],
    )
    return result


def streams(settings: Settings) -> Scenario:
    n = 1000
    chunks = 8 if settings.quick else 20
    sc = Scenario("streams", "1,000 concurrent open streams through one gateway worker (issue 2)")
    sc.notes += [
        f"Upstream streams {chunks} tokens, one per second; {n} streaming requests are opened "
        "at once (ramped over ~0.5 s) and read to the end.",
        "Gateway: one worker, pass-through route, audit on (SQLite), metrics on, traces off. "
        "RSS = VmRSS from /proc/<pid>/status, sampled every 0.2 s.",
    ]
    tmp = settings.log_dir / "streams"
    results: dict[str, dict[str, Any]] = {}
    with cluster(settings) as cl:
        up = cl.upstream(chunks=chunks, interval_ms=1000)
        gw = cl.gateway("gateway", gateway_config(up, tmp, audit=True))
        results["gateway"] = _stream_rss(settings, gw, {"gateway": gw.pid}, n, chunks)
        if not settings.quick:
            fwd = cl.start("forwarder", "forwarder", "--upstream", up.url)
            results["forwarder"] = _stream_rss(settings, fwd, {"forwarder": fwd.pid}, n, chunks)
    rows = []
    labels = {"gateway": "gateway (pass-through)", "forwarder": "minimal aiohttp forwarder"}
    for name, r in results.items():
        label = labels[name]
        per_stream = (r["open_rss_mb"] or 0) - r["baseline_rss_mb"]
        rows.append(
            [label, f"{r['open_at_once']}/{n}", r["completed"], fmt(r["all_open_after_s"]),
             fmt(r["baseline_rss_mb"], 1), fmt(r["open_rss_mb"], 1), fmt(r["peak_rss_mb"], 1),
             fmt(per_stream * 1024 / n, 1)]
        )  # fmt: skip
    sc.table(
        "Open streams and memory",
        ["process", "open at once", "completed", "all open after s", "idle RSS MB",
         "RSS all open MB", "peak RSS MB", "KB per stream"],
        rows,
    )  # fmt: skip
    g = results["gateway"]
    peak = g["peak_rss_mb"] or 0.0
    sc.check(
        "gateway RSS with 1,000 open streams", f"{peak:.1f} MB", "< 250 MB", peak < RSS_TARGET_MB
    )
    sc.check(
        "streams open at once / completed",
        f"{g['open_at_once']} / {g['completed']}",
        f"{n} / {n}",
        g["open_at_once"] == n and g["completed"] == n,
    )
    sc.raw = results
    return sc


def _audit_rows(path: Path) -> int | None:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    except sqlite3.Error:
        return None


def _sent(runs: list[dict[str, Any]]) -> int:
    return sum(sum(r["statuses"].values()) for r in runs)


def observability(settings: Settings) -> Scenario:
    sc = Scenario("obs", "Audit + tracing overhead on the core scenario (issue 4)")
    sc.notes += [
        "Pass-through route, c=32, zero-latency upstream. audit: SQLite WAL, batch writer "
        "thread, content: redacted. tracing: traces otlp (HTTP/protobuf, BatchSpanProcessor) "
        "to a loopback sink (tests/bench/otlp_sink.py) via OTEL_EXPORTER_OTLP_ENDPOINT.",
        f"Median of {settings.rounds} interleaved run(s) of {settings.duration:g} s each.",
    ]
    tmp = settings.log_dir / "obs"
    variants = {
        "off": ("audit off, traces off", False, "none"),
        "audit": ("audit on, traces off", True, "none"),
        "tracing": ("audit off, traces otlp", False, "otlp"),
        "both": ("audit on, traces otlp", True, "otlp"),
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    with cluster(settings) as cl:
        up = cl.upstream()
        sink = cl.start("otlp-sink", "otlp_sink")
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "gateway-bench"}
        gateways = {
            name: cl.gateway(
                f"gateway-{name}", gateway_config(up, tmp / name, audit=a, traces=t), **env
            )
            for name, (_, a, t) in variants.items()
        }
        for _ in range(settings.rounds):
            for name, gw in gateways.items():
                runs[name].append(closed(settings, gw, 32))
        for name in ("tracing", "both", "audit"):
            gateways[name].stop()  # flushes spans and the audit queue
        spans = sink.get_json("/stats")["spans"]
    best = {name: median_run(r) for name, r in runs.items()}
    off = best["off"]["rps_median"]
    rows = [
        [label, rps(best[name]), fmt(best[name]["p50_ms"]), fmt(best[name]["p99_ms"]),
         fmt(ratio(best[name]["rps_median"], off)), cpu(best[name])]
        for name, (label, _, _) in variants.items()
    ]  # fmt: skip
    sc.table(
        "Gateway pass-through at c=32",
        ["gateway", "req/s", "p50 ms", "p99 ms", "vs both off", "gateway CPU %"],
        rows,
    )
    both = ratio(best["both"]["rps_median"], off)
    sc.check("audit+tracing on / both off, req/s at c=32", fmt(both), ">= 0.80", both >= 0.8)
    traced = _sent(runs["tracing"]) + _sent(runs["both"])
    per_request = spans / traced if traced else 0.0
    sc.check(
        "spans received by the OTLP sink per traced request",
        fmt(per_request),
        "2 (server + upstream)",
        per_request >= 1.99,
    )
    for name in ("audit", "both"):
        rows_written = _audit_rows(tmp / name / "audit.db")
        sent = _sent(runs[name])
        sc.check(
            f"audit rows written / requests answered ({variants[name][0]})",
            f"{rows_written} / {sent}",
            "equal",
            rows_written == sent,
        )
    sc.raw = {"runs": runs, "spans_received": spans}
    return sc
