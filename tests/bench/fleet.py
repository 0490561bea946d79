"""Scenarios of issue 15: the audit into PostgreSQL vs SQLite, and the shared verdict cache.

`fleet_audit`: pass-through at c=32 with audit on, into SQLite (the default) and into a
PostgreSQL server on loopback (a throwaway cluster, tests.fakes.engines), rounds
interleaved, ratio per round. `fleet_cache`: a repeated-text workload (each distinct
prompt asked several times) on a guarded route, sent to one gateway process, then split
over two gateway processes with and without a shared Valkey/Redis cache; what counts is
the classifier's call count.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from tests.bench.harness import (
    CHAT,
    KEY,
    Scenario,
    Settings,
    answered,
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
from tests.bench.procs import Server
from tests.fakes.engines import start_postgres, start_redis


def fleet_audit(settings: Settings) -> Scenario:
    sc = Scenario("fleet_audit", "Audit into PostgreSQL vs SQLite (issue 15)")
    sc.notes += [
        "Pass-through route, c=32, zero-latency upstream, audit on (content: redacted), one "
        "uvicorn worker plus its recorder. PostgreSQL on loopback, started by the bench "
        "(initdb in a temp dir, fsync=off as in the tests; its server processes share the "
        "machine's cores), written with COPY by the recorder; SQLite in WAL mode, "
        "synchronous=NORMAL.",
        f"{settings.rounds} interleaved rounds of {settings.duration:g} s; the ratio is per "
        "round, median [min, max]. CPU us/req counts the worker and its recorder.",
    ]
    tmp = settings.log_dir / "fleet_audit"
    pg = start_postgres()
    try:
        url = pg.new_database()
        with cluster(settings) as cl:
            up = cl.upstream()
            lite = gateway_config(up, tmp / "sqlite", audit=True)
            post = gateway_config(up, tmp / "pg", audit=True)
            post["audit"]["url"] = url
            gateways = {
                "sqlite": cl.gateway("gateway-audit-sqlite", lite),
                "pg": cl.gateway("gateway-audit-pg", post),
            }
            runs = interleaved(
                {n: (lambda g=g: closed(settings, g, 32)) for n, g in gateways.items()},
                settings.rounds,
            )
            for gw in gateways.values():
                gw.stop()
        import psycopg

        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        pg.close()
    rows = []
    for name, label in (("sqlite", "audit into SQLite"), ("pg", "audit into PostgreSQL")):
        s = summary(runs[name])
        rows.append(
            [label, rps(s), fmt(s["p50_ms"]), fmt(s["p99_ms"]), fmt(s["cpu_us_per_req"], 0)]
        )
    sc.table(
        "Gateway pass-through at c=32", ["audit", "req/s", "p50 ms", "p99 ms", "CPU us/req"], rows
    )
    ratio = paired(runs["pg"], runs["sqlite"])
    sc.check("PostgreSQL / SQLite, req/s at c=32", spread(ratio), ">= 0.90", ratio["median"] >= 0.9)
    sent = answered(runs["pg"])
    sc.check("PostgreSQL rows / requests answered", f"{stored} / {sent}", "equal", stored == sent)
    sc.raw = {"runs": runs}
    return sc


async def _repeated(urls: list[str], texts: list[str], repeats: int, concurrency: int) -> int:
    """Every text `repeats` times, shuffled, round-robin over the gateways; answered 200s."""
    order = texts * repeats
    random.Random(15).shuffle(order)
    jobs = list(enumerate(order))  # gateway by position: a text reaches each of them
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    ok = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                i, text = queue.get_nowait()
                reply = await client.post(
                    urls[i % len(urls)] + CHAT,
                    headers={"authorization": f"Bearer {KEY}"},
                    json={"model": "guarded-x", "messages": [{"role": "user", "content": text}]},
                )
                ok += reply.status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def fleet_cache(settings: Settings) -> Scenario:
    sc = Scenario("fleet_cache", "Shared verdict cache across gateway processes (issue 15)")
    distinct, repeats = (40, 5) if settings.quick else (100, 8)
    sc.notes += [
        f"{distinct} distinct prompts, each sent {repeats} times in shuffled order at c=16 to "
        "a guarded route (1 input policy, classifier 20 ms). One gateway process gets all of "
        "them; two processes share them round-robin, without and with classifier.cache_url "
        "(redis-server/valkey-server on loopback, flushed before the run).",
    ]
    tmp = settings.log_dir / "fleet_cache"
    texts = [f"a repeated question number {i} about the weather" for i in range(distinct)]
    cache = start_redis()
    results: dict[str, dict[str, Any]] = {}
    try:
        with cluster(settings) as cl:
            up = cl.upstream()
            classifier = cl.start("classifier", "classifier", "--delay-ms", "20")
            route = {"guarded": guarded_route(output=False)}

            def config(name: str, shared: bool) -> dict[str, Any]:
                data = gateway_config(up, tmp / name, routes=route, classifier=classifier)
                if shared:
                    data["classifier"]["cache_url"] = cache.url
                return data

            plans = {
                "one process": [cl.gateway("solo", config("solo", False))],
                "two processes, local caches": [
                    cl.gateway(f"local-{i}", config(f"local-{i}", False)) for i in range(2)
                ],
                "two processes, shared cache": [
                    cl.gateway(f"shared-{i}", config(f"shared-{i}", True)) for i in range(2)
                ],
            }
            for name, gateways in plans.items():
                results[name] = _count_calls(classifier, gateways, texts, repeats)
    finally:
        cache.close()
    base = results["one process"]["calls"]
    rows = [
        [name, r["answered"], r["calls"], fmt(r["calls"] / base if base else 0.0)]
        for name, r in results.items()
    ]
    sc.table("Classifier calls", ["gateways", "answered", "classifier calls", "vs one"], rows)
    shared = results["two processes, shared cache"]["calls"] / base if base else 0.0
    sc.check("two processes with the shared cache / one process, classifier calls",
             fmt(shared), "<= 1.10", shared <= 1.1)  # fmt: skip
    sc.raw = results
    return sc


def _count_calls(
    classifier: Server, gateways: list[Server], texts: list[str], repeats: int
) -> dict[str, Any]:
    before = classifier.get_json("/stats")["calls"]
    answered = asyncio.run(_repeated([g.url for g in gateways], texts, repeats, 16))
    return {"answered": answered, "calls": classifier.get_json("/stats")["calls"] - before}
