"""Scenarios of issues 2 and 4: pass-through cost, 1,000 open streams, audit + tracing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.harness import (
    CHAT,
    KEY,
    Scenario,
    Settings,
    answered,
    bracketed,
    closed,
    cluster,
    fmt,
    gateway_config,
    interleaved,
    paired,
    ratio_spread,
    rps,
    spread,
    summary,
)
from tests.bench.procs import RssSampler, Server, rss_mb, run_loadgen

RSS_TARGET_MB = 250.0
# The `obs` gateways: name -> (label, audit on, telemetry.traces, extra environment).
OBS_VARIANTS: dict[str, tuple[str, bool, str, dict[str, str]]] = {
    "off": ("audit off, traces off", False, "none", {}),
    "audit": ("audit on, traces off", True, "none", {}),
    "tracing": ("audit off, traces otlp", False, "otlp", {}),
    "both": ("audit on, traces otlp", True, "otlp", {}),
    "sampled": (
        "audit on, traces otlp sampled 10%", True, "otlp",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
}  # fmt: skip


def core(settings: Settings) -> Scenario:
    sc = Scenario("core", "Core: pass-through forwarding (issue 2)")
    c1_rounds = 1 if settings.quick else max(2, settings.rounds - 2)
    sc.notes += [
        "Zero-latency upstream (tests/bench/upstream.py, raw ASGI on uvicorn), fixed 323-byte "
        "chat completion; non-stream POST /v1/chat/completions.",
        "Gateway: one uvicorn worker (uvloop, httptools), pass-through route (no policies), "
        "metrics on (prometheus), traces off; audit off or on (SQLite, content: redacted).",
        f"Figures are medians of {settings.rounds} (c=32) / {c1_rounds} (c=1) interleaved runs "
        f"of {settings.duration:g} s; ratios and added latency are taken per round (adjacent "
        "runs) and shown as median [min, max]. CPU us/req = CPU time of the measured hop per "
        "request (all its threads, and for the gateway its recorder process).",
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
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for c, rounds in ((32, settings.rounds), (1, c1_rounds)):
            plan = {
                name: (lambda s=server, c=c: closed(settings, s, c, watch={"server": s}))
                for name, _, server in targets
            }
            runs[c] = interleaved(plan, rounds)
    rows = []
    for c in (1, 32):
        by = runs[c]
        for name, label, _ in targets:
            s = summary(by[name])
            added = paired(by[name], by["direct"], "p50_ms", "diff")
            rows.append(
                [label, c, rps(s), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
                 "-" if name == "direct" else spread(added),
                 spread(paired(by[name], by["forwarder"])), fmt(s["cpu_us_per_req"], 0),
                 fmt(s["cpu_pct"], 0)]
            )  # fmt: skip
    sc.table(
        "Pass-through forwarding",
        ["target", "c", "req/s", "p50 ms", "p99 ms", "p50 over direct, ms", "req/s vs forwarder",
         "CPU us/req", "CPU %"],
        rows,
    )  # fmt: skip
    for name, what in (("gateway", "audit off"), ("gateway_audit", "audit on")):
        r = paired(runs[32][name], runs[32]["forwarder"])
        sc.check(
            f"gateway/forwarder req/s at c=32 ({what})", spread(r), ">= 0.50", r["median"] >= 0.5
        )
        added = paired(runs[1][name], runs[1]["direct"], "p50_ms", "diff")
        sc.check(
            f"gateway p50 added over direct at c=1 ({what})",
            spread(added) + " ms",
            "<= 1 ms",
            added["median"] <= 1.0,
        )
    sc.raw = {
        "summary": {f"{n}@c{c}": summary(r) for c, by in runs.items() for n, r in by.items()},
        "runs": runs,
    }
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
    chunks = 6 if settings.quick else 20
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


def observability(settings: Settings) -> Scenario:
    sc = Scenario("obs", "Audit + tracing overhead on the core scenario (issue 4)")
    sc.notes += [
        "Pass-through route, c=32, zero-latency upstream. audit: SQLite WAL written by the "
        "worker's recorder process, content: redacted. tracing: traces otlp (HTTP/protobuf; "
        "the worker hands spans to its recorder, which encodes and POSTs them) to a loopback sink "
        "(tests/bench/otlp_sink.py) via OTEL_EXPORTER_OTLP_ENDPOINT; 2 spans per request "
        "(SERVER + upstream CLIENT). CPU us/req counts the worker and its recorder.",
        f"{settings.rounds} rounds of {settings.duration:g} s runs; each run sits between two "
        "runs of the both-off gateway and its ratio is against their mean (median [min, max] "
        "over the rounds); other figures are medians.",
    ]
    tmp = settings.log_dir / "obs"
    variants = dict(OBS_VARIANTS)
    if settings.quick:
        del variants["sampled"]
    with cluster(settings) as cl:
        up = cl.upstream()
        sink = cl.start("otlp-sink", "otlp_sink")
        other_sink = cl.start("otlp-sink-sampled", "otlp_sink")
        gateways = {}
        for name, (_, audit, traces, extra) in variants.items():
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": (other_sink if extra else sink).url,
                "OTEL_SERVICE_NAME": "gateway-bench",
                **extra,
            }
            config = gateway_config(up, tmp / name, audit=audit, traces=traces)
            gateways[name] = cl.gateway(f"gateway-{name}", config, **env)

        def measure(gw: Server) -> Callable[[], dict[str, Any]]:
            return lambda: closed(settings, gw, 32, watch={"server": gw})

        plan = {name: measure(gw) for name, gw in gateways.items() if name != "off"}
        off_runs, runs, ratios = bracketed(measure(gateways["off"]), plan, settings.rounds)
        runs["off"] = off_runs
        for name, gw in gateways.items():
            if name != "off":
                gw.stop()  # flushes spans and the audit queue
        spans = sink.get_json("/stats")["spans"]
        sampled_spans = other_sink.get_json("/stats")["spans"]
    rows = []
    for name, (label, *_) in variants.items():
        s = summary(runs[name])
        vs_off = spread(ratio_spread(ratios[name])) if name != "off" else "1.00"
        rows.append(
            [label, rps(s), fmt(s["p50_ms"]), fmt(s["p99_ms"]), vs_off,
             fmt(s["cpu_us_per_req"], 0), fmt(s["cpu_pct"], 0)]
        )  # fmt: skip
    sc.table(
        "Gateway pass-through at c=32",
        ["gateway", "req/s", "p50 ms", "p99 ms", "vs both off", "CPU us/req", "CPU %"],
        rows,
    )
    for name in ("audit", "tracing", "both", "sampled"):
        if name not in runs:
            continue
        r = ratio_spread(ratios[name])
        target, ok = (">= 0.80", r["median"] >= 0.8) if name == "both" else ("(info)", None)
        sc.check(f"{variants[name][0]} / both off, req/s at c=32", spread(r), target, ok)
    traced = answered(runs["tracing"]) + answered(runs["both"])
    per_request = spans / traced if traced else 0.0
    sc.check(
        "spans received by the OTLP sink per traced request",
        fmt(per_request),
        "2 (server + upstream)",
        per_request >= 1.99,
    )
    for name in ("audit", "both", "sampled"):
        if name not in runs:
            continue
        rows_written = _audit_rows(tmp / name / "audit.db")
        sent = answered(runs[name])
        sc.check(
            f"audit rows written / requests answered ({variants[name][0]})",
            f"{rows_written} / {sent}",
            "equal",
            rows_written == sent,
        )
    sc.raw = {"runs": runs, "spans_received": spans, "sampled_spans_received": sampled_spans}
    return sc
