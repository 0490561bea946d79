"""What the MCP gateway adds to an allowed tool call: `python tests/bench/mcp.py [--json]`.

The SDK's MCP server (tests/bench/mcp_server.py), the bench classifier (0 ms) and one
gateway worker, each in its own process on 127.0.0.1. The gateway's route guards the
call's arguments (one input policy) and its result (one output policy); every verdict is
cached after the warm-up, as for a repeated call. A closed-loop client (aiohttp, one call
at a time) opens an MCP session directly and one through the gateway, then alternates
rounds of `tools/call echo` between them; each round's p50 through the gateway minus the
adjacent round's p50 direct is the added latency, reported as median [min, max] of rounds,
with the gateway's CPU time per call (steadier than time on a busy machine).
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


def gateway_config(tmp: Path, classifier: str, mcp_url: str) -> Path:
    policies = tmp / "policies"
    policies.mkdir()
    for pid in ("args-policy", "result-policy"):
        (policies / f"{pid}.md").write_text(POLICY.format(pid=pid))
    config = {
        "upstreams": {"none": {"base_url": "http://127.0.0.1:9/v1"}},
        "classifier": {"base_url": classifier + "/v1"},
        "policies_dir": str(policies),
        "tenants": {"bench": {"keys": [KEY], "route": "tools"}},
        "routes": {
            "tools": {
                "upstream": "none",
                "mcp": {
                    "servers": ["bench"],
                    "input": {"policies": ["args-policy"]},
                    "output": {"policies": ["result-policy"]},
                },
            }
        },
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


async def measure(
    direct_url: str, gateway_url: str, rounds: int, calls: int, gateway_pid: int
) -> dict:
    async with aiohttp.ClientSession() as http:
        direct = Session(http, direct_url, {})
        through = Session(http, gateway_url, {"authorization": f"Bearer {KEY}"})
        await direct.open()
        await through.open()
        for _ in range(50):  # warm-up: connections, and the verdicts into the cache
            await direct.call()
            await through.call()
        added, direct_p50, gateway_p50, cpu_us = [], [], [], []
        for _ in range(rounds):
            d = statistics.median([await direct.call() for _ in range(calls)])
            cpu = cpu_seconds(gateway_pid)
            g = statistics.median([await through.call() for _ in range(calls)])
            cpu_us.append((cpu_seconds(gateway_pid) - cpu) / calls * 1e6)
            direct_p50.append(d)
            gateway_p50.append(g)
            added.append(g - d)
    return {
        "added_ms": added,
        "direct_p50_ms": direct_p50,
        "gateway_p50_ms": gateway_p50,
        "gateway_cpu_us": cpu_us,
    }


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
            config = gateway_config(tmp, classifier.url, mcp.url + "/mcp")
            gateway = Server("gateway", "tests.bench.gateway_server", ["--config", str(config)])
            servers.append(gateway.start(tmp))
            urls = mcp.url + "/mcp", gateway.url + "/mcp/bench"
            result = asyncio.run(measure(*urls, args.rounds, args.calls, gateway.pid))
            calls = classifier.get_json("/stats")["calls"]
        finally:
            for server in reversed(servers):
                server.stop()
    mode = "application/json" if args.json else "text/event-stream"
    print(f"MCP tools/call, one at a time, server answering {mode}; verdicts cached")
    print(f"rounds: {args.rounds} x {args.calls} calls; classifier calls in all: {calls}")
    print(f"direct p50 ms:  {spread(result['direct_p50_ms'])}")
    print(f"gateway p50 ms: {spread(result['gateway_p50_ms'])}")
    print(f"added p50 ms:   {spread(result['added_ms'])}  (median [min, max] over rounds)")
    print(f"gateway CPU us per call (worker + recorder): {spread(result['gateway_cpu_us'])}")


if __name__ == "__main__":
    main()
