"""The load generator, in its own process: an aiohttp client on uvloop with an unbounded pool.

    closed   N workers send chat requests back to back: a warm-up, then a measured window
             of `--duration` seconds (or `--max-requests` measured requests, whichever
             comes first). Reports ok req/s over the window and latency percentiles of the
             requests that started and finished inside it.
    streams  Open `--streams` streaming requests at once and read them to the end; reports
             how many were open at the same time and when.
    tokens   One stream at a time, `--runs` times: the arrival time of every token.

Markers on stdout for the orchestrator (it samples the server's CPU and memory on them):
`MEASURE` (window opens), `DONE` (window closes), `ALL_OPEN` (every stream is open);
the last line is `RESULT <json>`. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector

from tests.bench.common import die_with_parent, limit_lifetime, raise_fd_limit

SYSTEM = "You are a helpful assistant. Answer briefly."
PROMPT = "Summarise the plot of a heist film in two sentences, without spoilers."
DONE_FRAME = b"data: [DONE]\n\n"


def marker(name: str, **data: Any) -> None:
    print(name, orjson.dumps(data).decode() if data else "", flush=True)


class Bodies:
    """Request bodies: one shared body (`same`) or a unique prompt per request."""

    def __init__(self, model: str, prompt: str, stream: bool, messages_api: bool = False) -> None:
        self.model, self.unique, self.stream = model, prompt == "unique", stream
        self.messages_api = messages_api  # Anthropic's shape: `system` beside `messages`
        self.nonce = uuid.uuid4().hex[:10]  # a fresh gateway cache is not assumed
        self.fixed = self._encode(PROMPT)

    def _encode(self, prompt: str) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 64,
        }
        if self.messages_api:
            body["system"] = body["messages"].pop(0)["content"]
        if self.stream:
            body["stream"] = True
        return orjson.dumps(body)

    def get(self, worker: int, i: int) -> bytes:
        if not self.unique:
            return self.fixed
        return self._encode(f"{PROMPT} (request {self.nonce}-{worker}-{i})")


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def session(args: argparse.Namespace) -> ClientSession:
    return ClientSession(
        connector=TCPConnector(limit=0, ttl_dns_cache=None),
        timeout=ClientTimeout(total=args.request_timeout),
        skip_auto_headers=("User-Agent",),
    )


def headers(args: argparse.Namespace) -> dict[str, str]:
    return {"authorization": f"Bearer {args.key}", "content-type": "application/json"}


async def closed(args: argparse.Namespace) -> dict[str, Any]:
    bodies = Bodies(args.model, args.prompt, args.stream, args.messages_api)
    head = headers(args)
    loop_start = time.perf_counter()
    t_start = loop_start + args.warmup
    window = {"end": t_start + args.duration}
    samples: list[float] = []
    completions = 0
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    enough = asyncio.Event()

    async def worker(w: int, client: ClientSession) -> None:
        nonlocal completions
        i = 0
        while time.perf_counter() < window["end"] and not enough.is_set():
            t0 = time.perf_counter()
            ok = False
            try:
                async with client.post(args.url, data=bodies.get(w, i), headers=head) as r:
                    data = await r.read()
                    statuses[str(r.status)] += 1
                    ok = r.status == 200
                    if ok and args.stream and not data.endswith(DONE_FRAME):
                        ok = False
                        errors["incomplete_stream"] += 1
            except Exception as exc:
                errors[type(exc).__name__] += 1
            t1 = time.perf_counter()
            i += 1
            if not ok or not t_start <= t1 <= window["end"]:
                continue
            completions += 1
            if t0 >= t_start:
                samples.append(t1 - t0)
                if args.max_requests and len(samples) >= args.max_requests:
                    window["end"] = t1
                    enough.set()

    async with session(args) as client:
        workers = [asyncio.ensure_future(worker(w, client)) for w in range(args.concurrency)]
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        cpu0 = time.process_time()
        marker("MEASURE")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), timeout=max(0.0, window["end"] - t_start))
        t_end = window["end"] = min(window["end"], time.perf_counter())
        cpu1 = time.process_time()
        marker("DONE")
        _, late = await asyncio.wait(workers, timeout=args.request_timeout)
        for task in late:
            task.cancel()
    elapsed = max(t_end - t_start, 1e-9)
    ok_total = sum(v for k, v in statuses.items() if k == "200")
    return {
        "mode": "closed",
        "concurrency": args.concurrency,
        "stream": args.stream,
        "prompt": args.prompt,
        "window_s": round(elapsed, 3),
        "completed": completions,
        "rps": round(completions / elapsed, 1),
        "samples": len(samples),
        **percentiles(samples),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "not_ok": sum(statuses.values()) - ok_total,
        "client_cpu_pct": round((cpu1 - cpu0) / elapsed * 100, 1),
    }


async def streams(args: argparse.Namespace) -> dict[str, Any]:
    bodies = Bodies(args.model, args.prompt, True)
    head = headers(args)
    n = args.streams
    state = {"open": 0, "failed": 0, "done": 0}
    open_ms: list[float] = []
    errors: Counter[str] = Counter()
    all_open = asyncio.Event()
    started = time.perf_counter()

    def settle() -> None:
        if state["open"] + state["failed"] >= n:
            all_open.set()

    async def one(k: int, client: ClientSession) -> None:
        t0 = time.perf_counter()
        counted = False
        try:
            async with client.post(args.url, data=bodies.get(k, 0), headers=head) as r:
                first = await r.content.readany()
                if r.status != 200 or not first:
                    raise RuntimeError(f"status {r.status}")
                state["open"] += 1
                counted = True
                open_ms.append((time.perf_counter() - t0) * 1000)
                settle()
                tail = first[-32:]
                async for chunk in r.content.iter_any():
                    tail = (tail + chunk)[-32:]
                if tail.endswith(DONE_FRAME):
                    state["done"] += 1
                else:
                    errors["incomplete"] += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1
            if not counted:
                state["failed"] += 1
                settle()

    async with session(args) as client:
        tasks = []
        for k in range(n):  # ramp in batches: a burst of 1,000 SYNs is a test of the kernel
            tasks.append(asyncio.ensure_future(one(k, client)))
            if k % args.ramp_batch == args.ramp_batch - 1:
                await asyncio.sleep(args.ramp_gap_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), timeout=args.open_timeout)
        opened_at = time.perf_counter() - started
        marker("ALL_OPEN", open=state["open"], at_s=round(opened_at, 3))
        _, late = await asyncio.wait(tasks, timeout=args.request_timeout)
        for task in late:
            task.cancel()
        marker("DONE")
    return {
        "mode": "streams",
        "streams": n,
        "open_at_once": state["open"],
        "completed": state["done"],
        "failed_to_open": state["failed"],
        "all_open_after_s": round(opened_at, 3),
        "total_s": round(time.perf_counter() - started, 3),
        "open_p50_ms": percentiles([x / 1000 for x in open_ms])["p50_ms"],
        "open_max_ms": round(max(open_ms), 3) if open_ms else None,
        "errors": dict(errors),
    }


async def tokens(args: argparse.Namespace) -> dict[str, Any]:
    bodies = Bodies(args.model, args.prompt, True)
    head = headers(args)
    runs = []
    async with session(args) as client:
        for run in range(args.runs):
            arrivals: list[tuple[int, float]] = []
            t0 = time.perf_counter()
            buffer, chars = b"", 0
            async with client.post(args.url, data=bodies.get(0, run), headers=head) as r:
                status = r.status
                async for chunk in r.content.iter_any():
                    now_ms = (time.perf_counter() - t0) * 1000
                    buffer += chunk
                    *frames, buffer = buffer.split(b"\n\n")
                    for frame in frames:
                        if not frame.startswith(b"data: {"):
                            continue
                        choices = orjson.loads(frame[6:]).get("choices") or [{}]
                        text = (choices[0].get("delta") or {}).get("content") or ""
                        chars += len(text)
                        for word in text.split():
                            if word.startswith("t") and word[1:5].isdigit():
                                arrivals.append((int(word[1:5]), round(now_ms, 3)))
            runs.append(
                {
                    "status": status,
                    "total_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "chars": chars,
                    "tokens": arrivals,
                }
            )
    return {"mode": "tokens", "runs": runs}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="benchmark load generator (aiohttp)")
    parser.add_argument("mode", choices=("closed", "streams", "tokens"))
    parser.add_argument("--url", required=True, help="full URL of /v1/chat/completions")
    parser.add_argument("--key", default="sk-bench")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--prompt", choices=("same", "unique"), default="same")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--messages-api", action="store_true", help="Anthropic Messages bodies")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=0, help="0 = time-bounded only")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ramp-batch", type=int, default=100)
    parser.add_argument("--ramp-gap-s", type=float, default=0.05)
    parser.add_argument("--open-timeout", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--lifetime-s", type=float, default=600.0)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    raise_fd_limit()
    die_with_parent()
    limit_lifetime(args.lifetime_s)
    run = {"closed": closed, "streams": streams, "tokens": tokens}[args.mode]
    result = uvloop.run(run(args))
    print("RESULT", orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
