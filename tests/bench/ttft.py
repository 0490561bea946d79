"""Scenario of issue 16: a guarded stream's first token with growing windows."""

from __future__ import annotations

import statistics
from typing import Any

from tests.bench.harness import (
    CHAT,
    KEY,
    OUTPUT_POLICY,
    Scenario,
    Settings,
    cluster,
    fmt,
    gateway_config,
)
from tests.bench.procs import run_loadgen

TOKENS, INTERVAL_MS, CLASSIFIER_MS = 100, 20, 300


def _route(first_window_chars: int) -> dict[str, Any]:
    return {
        "upstream": "main",
        "output": {
            "policies": [OUTPUT_POLICY], "stream": "window",
            "first_window_chars": first_window_chars,
        },
    }  # fmt: skip


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}, {max(values):.0f}]"


def ttft(settings: Settings) -> Scenario:
    runs = 3 if settings.quick else 6
    sc = Scenario("ttft", "Guarded stream: first token with growing windows (issue 16)")
    sc.notes += [
        f"Classifier answers after {CLASSIFIER_MS} ms; the upstream streams {TOKENS} tokens, "
        f"one every {INTERVAL_MS} ms (~10 chars each, unique per request). Output policy "
        f"`{OUTPUT_POLICY}`, stream: window, window_chars 400, overlap_chars 120; `growing` = "
        "first_window_chars 24 (the default), `fixed` = first_window_chars 400 (the old "
        f"behaviour). c=1, {runs} streams each, one after another.",
        "First token = arrival of the first content token at the client, from the request's "
        "start; added = minus the direct stream's median first token. Classifier calls per "
        "streamed answer from the classifier's own count.",
    ]
    tmp = settings.log_dir / "ttft"
    routes = {"grow": _route(24), "fixed": _route(400)}
    results: dict[str, dict[str, Any]] = {}
    calls: dict[str, float] = {}
    with cluster(settings) as cl:
        clf = cl.start("classifier", "classifier", "--delay-ms", str(CLASSIFIER_MS))
        up = cl.upstream(echo=True, chunks=TOKENS, interval_ms=INTERVAL_MS)
        gw = cl.gateway("gateway", gateway_config(up, tmp, routes=routes, classifier=clf))
        for key, server, model in (
            ("direct", up, "bench"),
            ("grow", gw, "grow-bench"),
            ("fixed", gw, "fixed-bench"),
        ):
            before = clf.get_json("/stats")["calls"]
            results[key] = run_loadgen(
                "tokens", server.url + CHAT, key=KEY, model=model, prompt="unique", runs=runs,
                timeout=runs * (TOKENS * INTERVAL_MS / 1000 + 5) + 60,
            )  # fmt: skip
            calls[key] = (clf.get_json("/stats")["calls"] - before) / runs
    firsts = {
        key: [min(at for _, at in run["tokens"]) for run in r["runs"] if run["tokens"]]
        for key, r in results.items()
    }
    lasts = {
        key: [max(at for _, at in run["tokens"]) for run in r["runs"] if run["tokens"]]
        for key, r in results.items()
    }
    direct = statistics.median(firsts["direct"])
    added = {key: [at - direct for at in values] for key, values in firsts.items()}
    rows = []
    labels = {
        "direct": "upstream directly",
        "grow": "gateway, growing windows (24 -> 400)",
        "fixed": "gateway, fixed windows (400)",
    }
    for key, label in labels.items():
        complete = all(len(run["tokens"]) == TOKENS for run in results[key]["runs"])
        rows.append(
            [label, _spread(firsts[key]), "-" if key == "direct" else _spread(added[key]),
             _spread(lasts[key]), "-" if key == "direct" else fmt(calls[key], 2),
             "yes" if complete else "NO"]
        )  # fmt: skip
    sc.table(
        f"Classifier {CLASSIFIER_MS} ms, a token every {INTERVAL_MS} ms",
        ["path", "first token ms", "added ms", "last token ms", "classifier calls/answer",
         "all tokens"],
        rows,
    )  # fmt: skip
    worst = max(added["grow"])
    sc.check(
        "growing windows: first token after the direct stream's",
        _spread(added["grow"]) + " ms",
        "<= 450 ms",
        worst <= 450,
    )
    sc.check(
        "growing windows: classifier calls per 100-token answer",
        fmt(calls["grow"], 2),
        "<= 6",
        calls["grow"] <= 6,
    )
    sc.raw = {
        "first_token_ms": firsts,
        "last_token_ms": lasts,
        "classifier_calls_per_answer": calls,
        "direct_first_token_ms": direct,
    }
    return sc
