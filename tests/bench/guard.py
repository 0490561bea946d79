"""Scenarios of issue 3: guarded throughput, latency hiding, and `stream: window` delay."""

from __future__ import annotations

import statistics
from typing import Any

from tests.bench.harness import (
    CHAT,
    INPUT_POLICY,
    KEY,
    OUTPUT_POLICY,
    Scenario,
    Settings,
    _cpu_us,
    closed,
    cluster,
    fmt,
    gateway_config,
    guarded_route,
    interleaved,
    paired,
    rps,
    spread,
    summary,
)
from tests.bench.procs import Server, run_loadgen

GUARDED = "guarded-bench"  # the model name that routes to the guarded route


def _with_calls(classifier: Server, run: Any) -> dict[str, Any]:
    before = classifier.get_json("/stats")["calls"]
    result = run()
    calls = classifier.get_json("/stats")["calls"] - before
    sent = max(1, sum(result["statuses"].values()))
    result["classifier_calls_per_request"] = round(calls / sent, 2)
    return result


def guard(settings: Settings) -> Scenario:
    sc = Scenario("guard", "Guarded route throughput (issue 3)")
    sc.notes += [
        f"Guarded route: input policy `{INPUT_POLICY}` (mode: sequential) and output policy "
        f"`{OUTPUT_POLICY}` (stream: window, 400/120 chars), real policy files from policies/; "
        'fail: closed. Classifier: tests/bench/classifier.py, 0 ms, answers {"violation":0} '
        "with reasoning_content. Verdict cache: default (10,000 entries, 1 h).",
        "miss = a unique prompt per request and an upstream that echoes it (both verdicts "
        "miss); hit = one prompt for every request. Gateway audit off, traces off.",
        "Streams: 100 tokens (~1,100 chars, unique per request), no delay: the input check and "
        "~3 window checks per request.",
    ]
    tmp = settings.log_dir / "guard"
    plan = [  # (key, label, target, loadgen options)
        ("forwarder", "minimal aiohttp forwarder", "fwd", {}),
        ("open", "gateway, pass-through route", "gw", {}),
        ("miss", "gateway, guarded, cache miss", "gw", {"model": GUARDED, "prompt": "unique"}),
        ("hit", "gateway, guarded, cache hit", "gw", {"model": GUARDED}),
    ]
    stream_plan = [
        ("s_forwarder", "minimal aiohttp forwarder, stream", "fwd", {"stream": True}),
        ("s_open", "gateway, pass-through route, stream", "gw", {"stream": True}),
        ("s_miss", "gateway, guarded stream (window), miss", "gw",
         {"model": GUARDED, "prompt": "unique", "stream": True}),
    ]  # fmt: skip
    side_rounds = 1 if settings.quick else 3
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with cluster(settings) as cl:
        clf = cl.start("classifier", "classifier")
        up = cl.upstream(echo=True, chunks=100)
        config = gateway_config(up, tmp, routes={"guarded": guarded_route()}, classifier=clf)
        servers = {
            "fwd": cl.start("forwarder", "forwarder", "--upstream", up.url),
            "gw": cl.gateway("gateway", config),
        }

        def job(target: str, c: int, options: dict[str, Any]) -> Any:
            server = servers[target]
            return lambda: _with_calls(
                clf, lambda: closed(settings, server, c, watch={"server": server}, **options)
            )

        c1_plan = plan[1:] if settings.quick else plan
        for c, steps, rounds in (
            (32, plan, settings.rounds),
            (32, stream_plan, side_rounds),
            (1, c1_plan, side_rounds),
        ):
            done = interleaved({key: job(t, c, o) for key, _, t, o in steps}, rounds)
            runs.update({(key, c): r for key, r in done.items()})
    rows = []
    labels = {key: (label, target) for key, label, target, _ in plan + stream_plan}
    for (key, c), by in runs.items():
        label, target = labels[key]
        s = summary(by)
        reference = runs.get(("s_forwarder" if key.startswith("s_") else "forwarder", c))
        vs = spread(paired(by, reference)) if reference else "-"
        calls = statistics.median(r["classifier_calls_per_request"] for r in by)
        rows.append(
            [label, c, rps(s), fmt(s["p50_ms"]), fmt(s["p99_ms"]), vs,
             fmt(calls) if target == "gw" else "-", fmt(s["cpu_us_per_req"], 0),
             fmt(s["cpu_pct"], 0)]
        )  # fmt: skip
    sc.table(
        "Guarded requests",
        ["target", "c", "req/s", "p50 ms", "p99 ms", "req/s vs forwarder", "classifier calls/req",
         "CPU us/req", "CPU %"],
        rows,
    )  # fmt: skip
    hit = paired(runs[("hit", 32)], runs[("forwarder", 32)])
    miss = paired(runs[("miss", 32)], runs[("forwarder", 32)])
    sc.check(
        "guarded (cache hit)/forwarder req/s at c=32", spread(hit), ">= 0.70", hit["median"] >= 0.70
    )
    sc.check("guarded (cache miss)/forwarder req/s at c=32", spread(miss), "(info)", None)
    stream_cpu = [v for r in runs[("s_miss", 32)] if (v := _cpu_us(r, "server")) is not None]
    sc.check(
        "guarded window stream (100 tokens), gateway CPU per stream at c=32",
        f"{statistics.median(stream_cpu):.0f} [{min(stream_cpu):.0f}, {max(stream_cpu):.0f}] us",
        "<= 1500 us",
        statistics.median(stream_cpu) <= 1500,
    )
    stream_calls = [r["classifier_calls_per_request"] for r in runs[("s_miss", 32)]]
    sc.check(
        "classifier calls per guarded streamed answer (1 input + output windows)",
        fmt(statistics.median(stream_calls), 2),
        "(info)",
        None,
    )
    for key, what in (("hit", "cache hit"), ("miss", "miss, 2 classifier calls")):
        added = paired(runs[(key, 1)], runs[("open", 1)], "p50_ms", "diff")
        sc.check(
            f"guarded ({what}) p50 added over pass-through at c=1",
            spread(added) + " ms",
            "(info)",
            None,
        )
    sc.raw = {
        "summary": {f"{k}@c{c}": summary(v) for (k, c), v in runs.items()},
        "runs": {f"{k}@c{c}": v for (k, c), v in runs.items()},
    }
    return sc


def hiding(settings: Settings) -> Scenario:
    n = 6 if settings.quick else 20
    sc = Scenario("hiding", "Latency hiding: parallel vs sequential input guard (issue 3)")
    sc.notes += [
        "Classifier answers after 200 ms; the upstream answers after 300 ms (non-stream). "
        f"One input policy (`{INPUT_POLICY}`), no output policy; c=1, {n} measured requests "
        "each, unique prompts (every request is classified).",
    ]
    tmp = settings.log_dir / "hiding"
    routes = {
        "par": guarded_route(input_mode="parallel", output=False),
        "seq": guarded_route(input_mode="sequential", output=False),
    }
    plan = [
        ("direct", "upstream directly", "up", "bench"),
        ("open", "gateway, unguarded", "gw", "bench"),
        ("par", "gateway, input mode: parallel", "gw", "par-bench"),
        ("seq", "gateway, input mode: sequential", "gw", "seq-bench"),
    ]
    runs: dict[str, dict[str, Any]] = {}
    with cluster(settings) as cl:
        clf = cl.start("classifier", "classifier", "--delay-ms", "200")
        up = cl.upstream(ttft_ms=300)
        gw = cl.gateway("gateway", gateway_config(up, tmp, routes=routes, classifier=clf))
        servers = {"up": up, "gw": gw}
        for key, _, target, model in plan:
            runs[key] = closed(
                settings, servers[target], 1, model=model, prompt="unique",
                max_requests=n, warmup=0.4, duration=n * 1.0 + 10,
            )  # fmt: skip
    failed = [k for k, r in runs.items() if not r["samples"]]
    if failed:
        detail = {k: (runs[k]["statuses"], runs[k]["errors"]) for k in failed}
        raise RuntimeError(f"no successful requests for {', '.join(failed)}: {detail}")
    base = runs["open"]["p50_ms"]
    rows = [
        [label, runs[key]["samples"], fmt(runs[key]["p50_ms"], 1), fmt(runs[key]["mean_ms"], 1),
         fmt(runs[key]["p99_ms"], 1),
         "-" if key in ("direct", "open") else fmt(runs[key]["p50_ms"] - base, 1),
         "-" if key in ("direct", "open") else f"{(runs[key]['p50_ms'] / base - 1) * 100:+.1f}%"]
        for key, label, _, _ in plan
    ]  # fmt: skip
    sc.table(
        "Classifier 200 ms, upstream 300 ms",
        ["target", "requests", "p50 ms", "mean ms", "p99 ms", "added p50 ms", "added"],
        rows,
    )
    par = runs["par"]["p50_ms"] / base - 1
    seq = runs["seq"]["p50_ms"] - base
    sc.check("parallel mode added p50 over unguarded", f"{par * 100:+.1f}%", "<= 10%", par <= 0.10)
    sc.check(
        "sequential mode added p50 over unguarded",
        f"{seq:.0f} ms",
        "about 200 ms",
        180 <= seq <= 260,
    )
    sc.raw = runs
    return sc


def _arrivals(result: dict[str, Any]) -> tuple[dict[int, list[float]], float]:
    by_index: dict[int, list[float]] = {}
    chars = tokens = 0
    for run in result["runs"]:
        chars += run["chars"]
        tokens += len(run["tokens"])
        for index, at in run["tokens"]:
            by_index.setdefault(index, []).append(at)
    return by_index, chars / max(1, tokens)


def window(settings: Settings) -> Scenario:
    tokens, interval, window_chars, overlap = (120 if settings.quick else 200), 10, 400, 120
    runs = 2 if settings.quick else 4
    sc = Scenario("window", "`stream: window` per-token delay (issue 3)")
    sc.notes += [
        f"Upstream streams {tokens} tokens, one every {interval} ms (~11 chars each, unique per "
        f"request). Output policy `{OUTPUT_POLICY}` with stream: window, window_chars "
        f"{window_chars}, overlap_chars {overlap}; classifier 0 ms. c=1, {runs} streams each.",
        "Delay of a token = its arrival at the client minus its mean arrival when streamed "
        "from the upstream directly. Window fill time = window_chars / chars per token x "
        "token interval: the longest a token can wait for its window to fill.",
    ]
    tmp = settings.log_dir / "window"
    route = {
        "upstream": "main",
        "output": {
            "policies": [OUTPUT_POLICY], "stream": "window",
            "window_chars": window_chars, "overlap_chars": overlap,
        },
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    with cluster(settings) as cl:
        clf = cl.start("classifier", "classifier")
        up = cl.upstream(echo=True, chunks=tokens, interval_ms=interval)
        gw = cl.gateway("gateway", gateway_config(up, tmp, routes={"win": route}, classifier=clf))
        paths = (("direct", up, "bench"), ("open", gw, "bench"), ("win", gw, "win-bench"))
        for key, server, model in paths:
            results[key] = run_loadgen(
                "tokens", server.url + CHAT, key=KEY, model=model, prompt="unique", runs=runs,
                timeout=runs * (tokens * interval / 1000 + 5) + 60,
            )  # fmt: skip
    direct, chars_per_token = _arrivals(results["direct"])
    baseline = {i: statistics.fmean(v) for i, v in direct.items()}
    fill_ms = window_chars / chars_per_token * interval
    rows, summary = [], {}
    for key, label in (("open", "gateway, pass-through route"), ("win", "gateway, stream: window")):
        arrivals, _ = _arrivals(results[key])
        delays = sorted(
            at - baseline[i] for i, ats in arrivals.items() for at in ats if i in baseline
        )
        complete = all(len(r["tokens"]) == tokens for r in results[key]["runs"])
        summary[key] = {
            "mean_ms": statistics.fmean(delays), "p50_ms": delays[len(delays) // 2],
            "p95_ms": delays[int(len(delays) * 0.95)], "max_ms": delays[-1], "complete": complete,
        }  # fmt: skip
        s = summary[key]
        rows.append(
            [label, fmt(s["mean_ms"], 1), fmt(s["p50_ms"], 1), fmt(s["p95_ms"], 1),
             fmt(s["max_ms"], 1), fmt(fill_ms, 0), "yes" if complete else "NO"]
        )  # fmt: skip
    sc.table(
        "Added delay per token vs. the upstream directly",
        ["path", "mean ms", "p50 ms", "p95 ms", "max ms", "window fill ms", "all tokens"],
        rows,
    )
    worst = summary["win"]["max_ms"]
    sc.check(
        "window: max per-token delay vs window fill time",
        f"{worst:.0f} ms / {fill_ms:.0f} ms",
        "<= fill time (+25 ms)",
        worst <= fill_ms + 25 and summary["win"]["complete"],
    )
    sc.raw = {
        "summary": summary,
        "fill_ms": round(fill_ms, 1),
        "chars_per_token": round(chars_per_token, 2),
        "mean_arrival_ms": {
            key: [round(statistics.fmean(v), 2) for _, v in sorted(_arrivals(r)[0].items())]
            for key, r in results.items()
        },
        "runs": {
            key: [{k: v for k, v in run.items() if k != "tokens"} | {"tokens": len(run["tokens"])}
                  for run in r["runs"]]
            for key, r in results.items()
        },
    }  # fmt: skip
    return sc
