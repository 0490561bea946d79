"""What one classifier call costs the gateway, counted by valgrind: a cache miss (the whole
`VerdictCache.get_or_classify` -> `SafeguardClient.classify` path), a cache hit, and, as
the reference, the same POST sent and read through an aiohttp session.

    python tests/bench/classifier_cost.py   # ~3 minutes; needs valgrind

Each variant runs in its own process under `valgrind --tool=cachegrind` twice (N1 and N2
calls from 4 concurrent tasks against tests/bench/classifier.py on loopback, which is
not counted); the difference over N2 - N1 is one call, start-up cancelled out.
Instructions are not time, but they repeat to within 1-2% on this shared VM.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N1, N2 = 200, 1200
TASKS = 4


async def calls(port: int, n: int, variant: str) -> None:
    import aiohttp

    from proxy.guard.cache import VerdictCache
    from proxy.guard.safeguard import SafeguardClient
    from proxy.policies import load_policies

    policy = load_policies(ROOT / "policies")["violence"]
    client = SafeguardClient(f"http://127.0.0.1:{port}/v1", "openai/gpt-oss-safeguard-20b")
    cache = VerdictCache(ttl_s=3600, size=10_000)
    session = aiohttp.ClientSession()

    def text(task: int, i: int) -> str:
        return f"window {task}-{i} " + "y" * 400

    async def miss(task: int, i: int) -> None:
        content = text(task, i)
        await cache.get_or_classify(policy, content, lambda: client.classify(policy, content))

    async def raw(task: int, i: int) -> None:
        body = client.request_body(policy, text(task, i))
        headers = {"content-type": "application/json"}
        async with session.post(client.url, data=body, headers=headers) as response:
            await response.read()

    call = raw if variant == "aiohttp" else miss

    async def task(k: int) -> None:
        for i in range(n // TASKS):
            await call(k, i)

    await asyncio.gather(*(task(k) for k in range(TASKS)))
    if variant == "hit":  # the same texts again, three times: all hits
        for _ in range(3):
            await asyncio.gather(*(task(k) for k in range(TASKS)))
    await session.close()
    await client.aclose()


def counted(port: int, n: int, variant: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={tmp}/cg",
             f"--log-file={tmp}/log", sys.executable, __file__, "--child", str(port), str(n),
             variant],
            check=True, cwd=ROOT,
        )  # fmt: skip
        summary = next(ln for ln in Path(tmp, "cg").read_text().splitlines() if "summary:" in ln)
        return int(summary.split()[1])


def main() -> None:
    from tests.bench.harness import Cluster

    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sg-classifier-cost-")))
    try:
        port = cluster.start("classifier", "classifier").port
        per = {v: (counted(port, N2, v) - counted(port, N1, v)) / (N2 - N1)
               for v in ("aiohttp", "miss", "hit")}  # fmt: skip
    finally:
        cluster.stop()
    hit = (per["hit"] - per["miss"]) / 3
    print(f"Instructions per call, {N2 - N1} calls, {TASKS} tasks (valgrind cachegrind):\n")
    print("| what | instructions |\n|---|---|")
    print(f"| aiohttp POST + read of the same body (reference) | {per['aiohttp']:,.0f} |")
    print(f"| classifier call, cache miss (gateway path) | {per['miss']:,.0f} |")
    print(f"| cache hit | {hit:,.0f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(ROOT))
        import uvloop

        uvloop.run(calls(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    else:
        sys.path.insert(0, str(ROOT))
        main()
