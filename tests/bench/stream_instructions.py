"""Instructions per guarded window stream, counted by valgrind: the gateway's own work for
the `guard` scenario's stream (issue 16: <= 1.5 ms of gateway CPU) without the VM's noise.

    python tests/bench/stream_instructions.py [--streams 100,400] [--only guarded,open]

The `guard` scenario's setup (echo upstream streaming 100 tokens, 0 ms classifier, the
guarded route: 1 input + 1 output policy, stream: window), streams with a unique prompt
each from 8 concurrent clients. Each target runs twice under cachegrind, serving N1 and
then N2 streams; the difference over N2 - N1 is one stream's cost, start-up and shutdown
cancelled out. `guarded` streams through the guarded route (4 classifier calls, all
misses), `open` through the pass-through route. ~2 minutes; needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `tests.bench.*` from the repo root
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in ("", _here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from tests.bench.harness import CHAT, KEY, Cluster, gateway_config, guarded_route
from tests.bench.procs import Server

MODELS = {"guarded": "guarded-bench", "open": "bench"}
CONCURRENCY = 8


async def load(url: str, model: str, streams: int) -> None:
    """`streams` streamed chat completions, a unique prompt each; each must end in [DONE]."""
    left, nonce = streams, uuid.uuid4().hex[:8]
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    async def client(session: aiohttp.ClientSession, worker: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            prompt = f"Say hello (request {nonce}-{worker}-{left})"
            body = {
                "model": model,
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            }
            async with session.post(url, data=json.dumps(body), headers=headers) as response:
                data = await response.read()
                if response.status != 200 or not data.endswith(b"data: [DONE]\n\n"):
                    raise RuntimeError(f"gateway answered {response.status}: {data[-200:]!r}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session, w) for w in range(CONCURRENCY)))


def counted(config_path: Path, model: str, streams: int, run_dir: Path) -> int:
    """Instructions of the gateway worker over a run serving `streams` streams."""
    run_dir.mkdir()
    valgrind = (
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
        f"--cachegrind-out-file={run_dir}/cg.%p", f"--log-file={run_dir}/valgrind.%p.log",
    )  # fmt: skip
    server = Server(
        "gateway", "tests.bench.gateway_server", ["--config", str(config_path)], {},
        startup_s=120.0, wrapper=valgrind,
    )  # fmt: skip
    try:
        server.start(run_dir)
        asyncio.run(load(server.url + CHAT, model, 50))  # connections, caches, first frames
        asyncio.run(load(server.url + CHAT, model, streams))
    finally:
        server.stop(timeout=300)
    summary = (run_dir / f"cg.{server.pid}").read_text().split("summary:")[1]
    return int(summary.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,400", help="N1,N2 streams per pair")
    parser.add_argument("--only", default="guarded,open", help="targets, comma-separated")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    n1, n2 = (int(n) for n in args.streams.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="sg-stream-instructions-"))
    cluster = Cluster(tmp)
    rows = {}
    try:
        classifier = cluster.start("classifier", "classifier")
        upstream = cluster.upstream(echo=True, chunks=100)
        config = gateway_config(
            upstream, tmp, routes={"guarded": guarded_route()}, classifier=classifier
        )
        config_path = tmp / "gateway.json"
        config_path.write_text(json.dumps(config))
        for name in [n for n in args.only.split(",") if n]:
            first, second = (
                counted(config_path, MODELS[name], n, tmp / f"{name}-{n}") for n in (n1, n2)
            )
            rows[name] = (second - first) / (n2 - n1)
            print(f"[stream-instructions] {name}: {rows[name]:,.0f}", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"Gateway worker instructions per 100-token stream, {n2 - n1} streams, c={CONCURRENCY}:\n"
    )
    print("| route | instructions per stream |")
    print("|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:,.0f} |")


if __name__ == "__main__":
    main()
