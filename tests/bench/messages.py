"""Scenario of issue 14: pass-through `POST /v1/messages` (Anthropic Messages API) against
the minimal forwarder on the same route shape, with chat pass-through beside it."""

from __future__ import annotations

from typing import Any

from tests.bench.harness import (
    CHAT,
    KEY,
    Scenario,
    Settings,
    cluster,
    fmt,
    gateway_config,
    interleaved,
    paired,
    rps,
    spread,
    summary,
)
from tests.bench.procs import run_loadgen

MESSAGES = "/v1/messages"


def _closed(settings: Settings, server: Any, path: str, concurrency: int) -> dict[str, Any]:
    return run_loadgen(
        "closed",
        server.url + path,
        watch={"server": server.pid},
        concurrency=concurrency,
        key=KEY,
        duration=settings.duration,
        warmup=settings.warmup,
        messages_api=path == MESSAGES,
        model="claude-bench" if path == MESSAGES else "bench",
        timeout=settings.duration + settings.warmup + 90,
    )


def messages(settings: Settings) -> Scenario:
    sc = Scenario("messages", "Anthropic Messages API pass-through (issue 14)")
    sc.notes += [
        "Zero-latency upstream answering a fixed Anthropic Message on POST /v1/messages "
        "(tests/bench/upstream.py); Messages-shaped requests (system beside messages).",
        "Gateway: one uvicorn worker, a pass-through route to an `api: anthropic` upstream "
        "(no policies), audit off, metrics on; the forwarder forwards the same path.",
        f"c=32, {settings.rounds} interleaved runs of {settings.duration:g} s; ratios per "
        "round (adjacent runs), median [min, max].",
    ]
    tmp = settings.log_dir / "messages"
    with cluster(settings) as cl:
        up = cl.upstream()
        fwd_messages = cl.start(
            "fwd-messages", "forwarder", "--upstream", up.url, "--path", MESSAGES
        )
        fwd_chat = cl.start("fwd-chat", "forwarder", "--upstream", up.url)
        gw = cl.gateway("gateway-messages", messages_config(up, tmp))
        targets = [
            ("forwarder_messages", "minimal forwarder, /v1/messages", fwd_messages, MESSAGES),
            ("gateway_messages", "gateway, /v1/messages", gw, MESSAGES),
            ("forwarder_chat", "minimal forwarder, /v1/chat/completions", fwd_chat, CHAT),
            ("gateway_chat", "gateway, /v1/chat/completions", gw, CHAT),
        ]
        plan = {
            name: (lambda s=server, p=path: _closed(settings, s, p, 32))
            for name, _, server, path in targets
        }
        runs = interleaved(plan, settings.rounds)
    ratios = {
        "messages": paired(runs["gateway_messages"], runs["forwarder_messages"]),
        "chat": paired(runs["gateway_chat"], runs["forwarder_chat"]),
    }
    rows = []
    for name, label, _, _ in targets:
        s = summary(runs[name])
        versus = ratios.get(name.removeprefix("gateway_")) if name.startswith("gateway") else None
        rows.append(
            [label, rps(s), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
             spread(versus) if versus else "-", fmt(s["cpu_us_per_req"], 0)]
        )  # fmt: skip
    sc.table(
        "Pass-through at c=32",
        ["target", "req/s", "p50 ms", "p99 ms", "req/s vs its forwarder", "CPU us/req"],
        rows,
    )
    r = ratios["messages"]
    sc.check(
        "gateway/forwarder req/s at c=32, /v1/messages", spread(r), ">= 0.80", r["median"] >= 0.8
    )
    sc.raw = {"summary": {n: summary(r) for n, r in runs.items()}, "runs": runs}
    return sc


def messages_config(up: Any, tmp: Any) -> dict[str, Any]:
    """The bench gateway plus route `claude` (models `claude-...`) to the same upstream
    speaking the Messages API; every other model takes the OpenAI route `open`."""
    config = gateway_config(up, tmp)
    config["upstreams"]["claude"] = {**config["upstreams"]["main"], "api": "anthropic"}
    config["routes"]["claude"] = {"upstream": "claude"}
    config["tenants"]["bench"]["routes"] = {"claude-*": "claude", "*": "open"}
    return config
