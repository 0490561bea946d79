"""What the MCP gateway adds to an allowed tool call: `python tests/bench/mcp.py [--json]`.

The SDK's MCP server (tests/bench/mcp_server.py), the bench classifier (0 ms) and two
gateway workers, each in its own process on 127.0.0.1: one relays the server with no
policies, the other guards the call's arguments (one input policy) and its result (one
output policy), every verdict cached after the warm-up, as for a repeated call. A
closed-loop client (aiohttp, one call at a time) opens an MCP session directly and one
through each gateway, then alternates rounds of `tools/call echo` between them; each
round's p50 through a gateway minus that round's p50 direct is the added latency,
reported as median [min, max] of rounds, with each gateway's CPU time per call (steadier
than time on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `tests.bench.*` from the repo root
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in ("", _here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from tests.bench.procs import Server, cpu_seconds

KEY = "sk-bench-mcp"
POLICY = "---\nid: {pid}\naction: block\n---\n## INSTRUCTIONS\nBench policy {pid}.\n"
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}


def gateway_config(tmp: Path, classifier: str, mcp_url: str, guarded: bool = True) -> Path:
    """One gateway's config: the MCP route guarded both ways, or a plain relay."""
    tmp = tmp / ("guarded" if guarded else "relay")
    policies = tmp / "policies"
    policies.mkdir(parents=True)
    for pid in ("args-policy", "result-policy"):
        (policies / f"{pid}.md").write_text(POLICY.format(pid=pid))
    mcp: dict = {"servers": ["bench"]}
    if guarded:
        mcp |= {"input": {"policies": ["args-policy"]}, "output": {"policies": ["result-policy"]}}
    config = {
        "upstreams": {"none": {"base_url": "http://127.0.0.1:9/v1"}},
        "classifier": {"base_url": classifier + "/v1"},
        "policies_dir": str(policies),
        "tenants": {"bench": {"keys": [KEY], "route": "tools"}},
        "routes": {"tools": {"upstream": "none", "mcp": mcp}},
        "mcp_servers": {"bench": {"url": mcp_url}},
        "audit": {"path": str(tmp / "audit.db")},
    }
    path = tmp / "gateway.json"
    path.write_text(json.dumps(config))
    return path


class Session:
    """One MCP session over raw HTTP: initialize, then `tools/call` as fast as it answers."""

    def __init__(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        self.http, self.url = http, url
        self.headers = {"accept": "application/json, text/event-stream", **headers}
        self.next_id = 1

    async def open(self) -> None:
        async with self.http.post(self.url, json=INIT, headers=self.headers) as response:
            assert response.status == 200, response.status
            await response.read()
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = "2025-11-25"
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.http.post(self.url, json=note, headers=self.headers) as response:
            await response.read()

    async def call(self) -> float:
        self.next_id += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "the quarterly numbers"}},
        }
        started = time.perf_counter()
        async with self.http.post(self.url, json=body, headers=self.headers) as response:
            answer = await response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200 and b"the quarterly numbers" in answer, answer[:200]
        return elapsed * 1000


async def measure(urls: dict[str, str], pids: dict[str, int], rounds: int, calls: int) -> dict:
    """Per round and target, the p50 of `calls` sequential calls (targets alternate within
    a round), and each gateway's CPU time per call."""
    p50: dict[str, list[float]] = {name: [] for name in urls}
    cpu_us: dict[str, list[float]] = {name: [] for name in pids}
    async with aiohttp.ClientSession() as http:
        auth = {"authorization": f"Bearer {KEY}"}
        sessions = {
            name: Session(http, url, {} if name == "direct" else auth) for name, url in urls.items()
        }
        for session in sessions.values():
            await session.open()
        for _ in range(50):  # warm-up: connections, and the verdicts into the cache
            for session in sessions.values():
                await session.call()
        for _ in range(rounds):
            for name, session in sessions.items():
                cpu = cpu_seconds(pids[name]) if name in pids else 0.0
                p50[name].append(statistics.median([await session.call() for _ in range(calls)]))
                if name in pids:
                    cpu_us[name].append((cpu_seconds(pids[name]) - cpu) / calls * 1e6)
    return {"p50_ms": p50, "cpu_us": cpu_us}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the server answers JSON, not SSE")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        servers = []
        try:
            classifier = Server("classifier", "tests.bench.classifier").start(tmp)
            servers.append(classifier)
            mcp = Server("mcp", "tests.bench.mcp_server", ["--json"] if args.json else [])
            servers.append(mcp.start(tmp))
            urls, pids = {"direct": mcp.url + "/mcp"}, {}
            for name, guarded in (("relay", False), ("guarded", True)):
                config = gateway_config(tmp, classifier.url, mcp.url + "/mcp", guarded)
                gateway = Server(name, "tests.bench.gateway_server", ["--config", str(config)])
                servers.append(gateway.start(tmp))
                urls[name], pids[name] = gateway.url + "/mcp/bench", gateway.pid
            result = asyncio.run(measure(urls, pids, args.rounds, args.calls))
            calls = classifier.get_json("/stats")["calls"]
        finally:
            for server in reversed(servers):
                server.stop()
    p50, cpu = result["p50_ms"], result["cpu_us"]
    mode = "application/json" if args.json else "text/event-stream"
    print(f"MCP tools/call, one at a time, server answering {mode}; verdicts cached")
    print(f"rounds: {args.rounds} x {args.calls} calls; classifier calls in all: {calls}")
    print("median [min, max] over rounds; added = p50 minus the same round's direct p50")
    print(f"direct p50 ms:                    {spread(p50['direct'])}")
    for name, what in (("relay", "relay, no policies"), ("guarded", "guarded both ways")):
        added = [g - d for g, d in zip(p50[name], p50["direct"], strict=True)]
        print(f"{what:<19} p50 ms: {spread(p50[name])}  added: {spread(added)}")
        print(f"{what:<19} CPU us per call (worker + recorder): {spread(cpu[name])}")


if __name__ == "__main__":
    main()
