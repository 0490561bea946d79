"""Instructions per request of the `obs` variants, counted by valgrind: the gateway's own
work for audit and tracing without this shared VM's noise.

    python tests/bench/instructions.py [--requests 500,2500] [--only off,both]

Each variant (the gateway config of the `obs` scenario) runs twice under
`valgrind --tool=cachegrind --cache-sim=no --trace-children=yes`, serving N1 and then N2
requests from 8 concurrent clients; the difference over N2 - N1 requests is what one
request costs, with start-up, warm-up and shutdown cancelled out. The worker and its
recorder are counted separately; the upstream, the OTLP sink and the client run natively
and are not counted. Instruction counts are not time (cache misses and other processes'
interference are not in them), but they repeat to within 1-2% where timed runs here
vary by 15% or more, so they show what a change does to the gateway's own work.
Needs valgrind (`apt install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `tests.bench.*` from the repo root
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in ("", _here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from tests.bench.core import OBS_VARIANTS
from tests.bench.harness import CHAT, KEY, Cluster, gateway_config
from tests.bench.procs import Server

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello"}]})
CONCURRENCY = 8


async def load(url: str, requests: int) -> None:
    """`requests` chat completions from CONCURRENCY clients; each must answer 200."""
    left = requests
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"gateway answered {response.status}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))


def counted(name: str, config: dict, env: dict[str, str], requests: int, tmp: Path) -> dict:
    """Instructions of the worker and of its recorder for one run of `requests`."""
    run_dir = tmp / f"{name}-{requests}"
    run_dir.mkdir()
    config_path = run_dir / "gateway.json"
    config_path.write_text(json.dumps(config))
    valgrind = (
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
        f"--cachegrind-out-file={run_dir}/cg.%p", f"--log-file={run_dir}/valgrind.%p.log",
    )  # fmt: skip
    server = Server(
        name, "tests.bench.gateway_server", ["--config", str(config_path)], env,
        startup_s=120.0, wrapper=valgrind,
    )  # fmt: skip
    try:
        server.start(run_dir)
        asyncio.run(load(server.url + CHAT, 50))  # connections, caches, first frames
        asyncio.run(load(server.url + CHAT, requests))
    finally:
        server.stop(timeout=300)  # SIGTERM: the recorder writes and exports everything
    totals = {}
    for path in run_dir.glob("cg.*"):
        summary = next(ln for ln in path.read_text().splitlines() if ln.startswith("summary:"))
        totals[int(path.suffix[1:])] = int(summary.split()[1])
    worker = totals.pop(server.pid)
    return {"worker": worker, "recorder": sum(totals.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="500,2500", help="N1,N2 requests per pair")
    parser.add_argument("--only", default=",".join(OBS_VARIANTS), help="variants, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the cachegrind files")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    n1, n2 = (int(n) for n in args.requests.split(","))
    names = [n for n in args.only.split(",") if n]
    tmp = Path(tempfile.mkdtemp(prefix="sg-instructions-"))
    cluster = Cluster(tmp)
    rows = {}
    try:
        upstream = cluster.upstream()
        sink = cluster.start("otlp-sink", "otlp_sink")
        for name in names:
            _, audit, traces, extra = OBS_VARIANTS[name]
            config = gateway_config(upstream, tmp / name, audit=audit, traces=traces)
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, **extra}
            first, second = (counted(name, config, env, n, tmp) for n in (n1, n2))
            rows[name] = {k: (second[k] - first[k]) / (n2 - n1) for k in first}
            print(f"[instructions] {name}: {rows[name]}", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
        if args.keep:
            print(f"[instructions] cachegrind files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    base = rows.get("off")
    print(f"Instructions per request, {n2 - n1} requests (valgrind cachegrind), c={CONCURRENCY}:\n")
    print("| gateway | worker | recorder | both processes | vs both off |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        total = row["worker"] + row["recorder"]
        versus = f"{total / (base['worker'] + base['recorder']):.2f}x" if base else "-"
        print(
            f"| {OBS_VARIANTS[name][0]} | {row['worker']:,.0f} | {row['recorder']:,.0f} "
            f"| {total:,.0f} | {versus} |"
        )


if __name__ == "__main__":
    main()
