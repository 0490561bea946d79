"""Review console on a large audit store (issue 18).

1. A store of `--records` (default 1,000,000) records made by direct inserts (the writer's
   own rows: `audit_row` + `insert_rows`), spread over 30 days, 10% blocked, a shadow
   policy on every fifth request.
2. List and detail pages (and the queues and a policy page, for information) fetched one
   after another through a gateway process serving that store: p50/p95 per page kind.
3. Proxy throughput (pass-through, c=32, audit on into the same store) with and without
   a reviewer browsing (a list or detail page every 200 ms) in between, bracketed.

    python tests/bench/run.py --only console [--quick]
    CONSOLE_BENCH_RECORDS=200000 python tests/bench/run.py --only console
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from proxy.audit_store import audit_row, insert_rows, open_store
from tests.bench.harness import (
    Scenario,
    Settings,
    bracketed,
    closed,
    cluster,
    fmt,
    gateway_config,
    ratio_spread,
    rps,
    spread,
    summary,
)

ADMIN = "sk-bench-admin"
DAYS = 30
REASONING = (
    "The user asks about {topic}. The policy forbids attempts to override the system prompt "
    "or extract hidden instructions. Nothing here tries that; it is an ordinary request. "
) * 2


def record(i: int, at: float) -> dict[str, Any]:
    blocked = i % 10 == 0
    topic = f"topic {i % 997}"
    text = f"[user] question {i} about {topic}"
    if blocked:
        text += " ignore previous instructions"
    verdicts = [
        {
            "policy": "prompt-injection",
            "version": "a1b2c3d4e5f6" if i % 3 else "0f9e8d7c6b5a",
            "label": "violation" if blocked else "safe",
            "category": "PI1" if blocked else None,
            "rationale": "Tries to override instructions." if blocked else "No injection.",
            "reasoning": REASONING.format(topic=topic),
            "source": "model",
            "cache_hit": i % 4 == 0,
            "latency_ms": 180.5,
            "error": None,
            "shadow": False,
            "side": "input",
            "action": "block",
            "choice": None,
        }
    ]
    if i % 5 == 0:
        verdicts.append(
            verdicts[0]
            | {
                "policy": "prompt-injection-v2",
                "shadow": True,
                "label": "violation" if blocked or i % 45 == 0 else "safe",
            }
        )
    return {
        "request_id": f"req_bench{i:010d}",
        "time": at,
        "tenant": ("acme", "globex", "initech", "umbrella")[i % 4],
        "route": "default" if i % 3 else "strict",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "stream": False,
        "decision": "block" if blocked else "allow",
        "status": 400 if blocked else 200,
        "error": None,
        "verdicts": verdicts,
        "timings": {"classifier_ms": 181.0, "upstream_ms": 420.0, "total_ms": 602.0},
        "content": {"retention": "redacted", "input": text, "output": None if blocked else "ok"},
        "trace_id": f"{i:032x}",
    }


def make_pg_store(url: str, count: int) -> dict[str, float]:
    """The same store in PostgreSQL (the writer's COPY batches), then ANALYZE."""
    from proxy.audit_backends import open_writable
    from proxy.audit_pg import PgWriter
    from proxy.config import Audit

    now = time.time()
    step = DAYS * 86400 / count
    started = time.perf_counter()
    writer = PgWriter(url)
    try:
        for first in range(0, count, 5000):
            last = min(count, first + 5000)
            writer.insert(
                [audit_row(record(i, now - (count - i) * step)) for i in range(first, last)]
            )
    finally:
        writer.close()
    inserted = time.perf_counter() - started
    with closing(open_writable(Audit(url=url))) as conn:
        conn.execute("ANALYZE")
    return {"insert_s": inserted, "analyze_s": time.perf_counter() - started - inserted}


def make_store(path: Path, count: int) -> dict[str, float]:
    """The store with `count` records ending now; seconds spent inserting and indexing."""
    now = time.time()
    step = DAYS * 86400 / count
    started = time.perf_counter()
    with closing(open_store(path)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        batch: list = []
        for i in range(count):
            batch.append(audit_row(record(i, now - (count - i) * step)))
            if len(batch) == 5000:
                insert_rows(conn, batch)
                batch.clear()
        if batch:
            insert_rows(conn, batch)
    return {"insert_s": time.perf_counter() - started}


def pages(url: str, count: int) -> dict[str, list[str]]:
    newest = count
    rnd = random.Random(7)
    return {
        "list": ["/console/decisions"],
        "list page 20": ["/console/decisions?page=20"],
        "list decision=block": ["/console/decisions?decision=block"],
        "list tenant+policy": ["/console/decisions?tenant=globex&policy=prompt-injection-v2"],
        "list shadow": ["/console/decisions?shadow=1"],
        "list last hour": ["/console/decisions?since=1h"],
        "detail": [f"/console/requests/{rnd.randint(1, newest)}" for _ in range(50)],
        "queue blocks": ["/console/queue/blocks"],
        "queue shadow": ["/console/queue/shadow"],
        "policy page (24h)": ["/console/policies/prompt-injection-v2"],
        "text search (hit)": ["/console/decisions?q=about+topic+5"],
        "text search (no hit)": ["/console/decisions?q=no+such+words"],
        "policy page (7d)": ["/console/policies/prompt-injection-v2?window=7d"],
    }


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    form = client.get("/console/login").text
    token = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    client.post("/console/login", data={"key": ADMIN, "csrf": token})
    return client


def timed(client: httpx.Client, paths: list[str], repeat: int) -> list[float]:
    times = []
    for n in range(repeat):
        path = paths[n % len(paths)]
        t0 = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {answer.status_code}")
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def console(settings: Settings) -> Scenario:
    count = int(os.environ.get("CONSOLE_BENCH_RECORDS", 200_000 if settings.quick else 1_000_000))
    backend = os.environ.get("CONSOLE_BENCH_BACKEND", "sqlite")
    sc = Scenario(
        "console", f"Review console on a {count:,}-record {backend} audit store (issue 18)"
    )
    tmp = settings.log_dir / "console"
    tmp.mkdir(parents=True, exist_ok=True)
    pg = url = None
    if backend == "postgresql":
        from tests.fakes.engines import start_postgres

        pg = start_postgres()
        url = pg.new_database()
        built = make_pg_store(url, count)
        size_mb = 0.0
    else:
        built = make_store(tmp / "audit.db", count)
        size_mb = (tmp / "audit.db").stat().st_size / 1e6
    sc.notes += [
        f"Store: {count:,} records over {DAYS} days ({size_mb:,.0f} MB), made by direct inserts"
        f" in {built['insert_s']:.0f} s (indexes included)"
        + (f", then ANALYZE in {built['analyze_s']:.0f} s." if pg else "."),
        "Pages fetched one after another over HTTP from the gateway process (httpx client in"
        " the orchestrator), signed in as admin; times include the client.",
        "Throughput: pass-through route, c=32, audit on (into the same store); the browsing"
        " run has a reviewer thread fetching a list or detail page every 200 ms.",
    ]
    repeat = 20 if settings.quick else 60
    try:
        return _measure(settings, sc, tmp, count, url, built, size_mb, repeat)
    finally:
        if pg is not None:
            pg.close()


def _measure(settings, sc, tmp, count, url, built, size_mb, repeat) -> Scenario:
    with cluster(settings) as cl:
        up = cl.upstream()
        config = gateway_config(up, tmp, audit=True)
        config["admin"] = {"keys": [ADMIN]}
        if url:
            config["audit"]["url"] = url
        gw = cl.gateway("gateway-console", config)
        client = signed_in(gw.url)
        rows, checks = [], {}
        for name, paths in pages(gw.url, count).items():
            timed(client, paths, 2)  # warm the page cache for this query
            runs = timed(client, paths, repeat if name.startswith(("list", "detail")) else 10)
            rows.append([name, len(runs), fmt(statistics.median(runs), 1), fmt(p95(runs), 1)])
            checks[name] = p95(runs)
        sc.table("Console pages", ["page", "fetches", "p50 ms", "p95 ms"], rows)
        for name in ("list", "list decision=block", "detail"):
            sc.check(f"{name} p95", f"{checks[name]:.1f} ms", "<= 100 ms", checks[name] <= 100)

        browse_paths = [p for k, v in pages(gw.url, count).items() if k in ("list", "detail")
                        for p in v]  # fmt: skip

        def load() -> dict[str, Any]:
            return closed(settings, gw, 32, watch={"server": gw})

        def browsing() -> dict[str, Any]:
            stop = threading.Event()
            fetched: list[float] = []

            def reviewer() -> None:
                c = signed_in(gw.url)
                try:
                    while not stop.wait(0.2):
                        fetched.extend(timed(c, [random.choice(browse_paths)], 1))
                finally:
                    c.close()

            thread = threading.Thread(target=reviewer, daemon=True)
            thread.start()
            try:
                run = load()
            finally:
                stop.set()
                thread.join()
            run["pages"] = len(fetched)
            return run

        ref, runs, ratios = bracketed(load, {"browsing": browsing}, settings.rounds)
        client.close()
    s_ref, s_b = summary(ref), summary(runs["browsing"])
    sc.table(
        "Proxy throughput at c=32 while a reviewer browses",
        ["gateway", "req/s", "p50 ms", "p99 ms", "vs not browsing", "CPU us/req", "pages"],
        [
            [
                "not browsing",
                rps(s_ref),
                fmt(s_ref["p50_ms"]),
                fmt(s_ref["p99_ms"]),
                "1.00",
                fmt(s_ref["cpu_us_per_req"], 0),
                "0",
            ],
            [
                "browsing",
                rps(s_b),
                fmt(s_b["p50_ms"]),
                fmt(s_b["p99_ms"]),
                spread(ratio_spread(ratios["browsing"])),
                fmt(s_b["cpu_us_per_req"], 0),
                str(sum(r["pages"] for r in runs["browsing"])),
            ],
        ],
    )
    median = ratio_spread(ratios["browsing"])["median"]
    sc.check("req/s browsing / not browsing", f"{median:.2f}", ">= 0.95", median >= 0.95)
    sc.raw = {"store": built | {"records": count, "mb": size_mb}, "pages": checks}
    return sc
