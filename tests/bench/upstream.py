"""A minimal OpenAI-compatible upstream for benchmarks: raw ASGI, as cheap as it gets.

`POST /v1/chat/completions` answers a fixed small chat completion (pre-encoded bytes), or,
with `"stream": true`, an SSE stream: a role chunk, `--chunks` content chunks of one token
each ("t0001 ", "t0002 ", ...), a finish chunk and `[DONE]`. `--ttft-ms` delays the answer
(the whole response, or the first token of a stream); `--interval-ms` paces tokens on an
absolute schedule (token i at ttft + i*interval, no drift). `--echo` puts the last user
message into a JSON answer, and a per-request tag into every streamed token ("t0001-2a "),
so that unique prompts give unique completions (verdict-cache misses on the output side).
`POST /v1/messages` answers a fixed small Anthropic Message. `GET /stats` -> {"requests": n}.

    python -m tests.bench.upstream [--port 0] [--ttft-ms 0] [--chunks 16] [--interval-ms 0]
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tests.bench.common import prepare, read_body, run_asgi, send_bytes, server_args

CREATED = 1_700_000_000
MESSAGE = "Hello! I am a benchmark upstream. How can I help you today?"


def completion(content: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26},
        }
    )


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def token(i: int) -> str:
    return f"t{i:04d} "


def tagged(i: int, tag: int) -> str:
    return f"t{i:04d}-{tag:x} "


def last_user(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


MESSAGE_BODY = orjson.dumps(  # what `POST /v1/messages` answers (the Anthropic Messages API)
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench",
        "content": [{"type": "text", "text": MESSAGE}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 14},
    }
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]})
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Upstream:
    def __init__(self, ttft_ms: float, chunks: int, interval_ms: float, echo: bool) -> None:
        self.ttft_s = ttft_ms / 1000
        self.interval_s = interval_ms / 1000
        self.chunks = chunks
        self.echo = echo
        self.fixed = completion(MESSAGE)
        self.head = chunk({"role": "assistant", "content": ""})
        self.tokens = [chunk({"content": token(i)}) for i in range(chunks)]
        self.tail = chunk({}, "stop") + b"data: [DONE]\n\n"
        self.requests = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path.endswith("/models"):
                await send_bytes(send, MODELS)
            elif path == "/stats":
                await send_bytes(send, orjson.dumps({"requests": self.requests}))
            else:
                await send_bytes(send, b'{"error": "not found"}', status=404)
            return
        raw = await read_body(receive)
        self.requests += 1
        body = orjson.loads(raw) if raw else {}
        if body.get("stream"):
            await self._stream(send, self.requests if self.echo else None)
            return
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        if path == "/v1/messages":
            await send_bytes(send, MESSAGE_BODY)
            return
        answer = completion(f"echo: {last_user(body)[:200]}") if self.echo else self.fixed
        await send_bytes(send, answer)

    async def _stream(self, send: Any, tag: int | None) -> None:
        """Tokens t0000, t0001, ...; with a tag (echo mode) unique to this request."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": self.head, "more_body": True})
        paced = self.ttft_s or self.interval_s
        for i in range(self.chunks):
            frame = self.tokens[i] if tag is None else chunk({"content": tagged(i, tag)})
            if paced:
                wait = started + self.ttft_s + i * self.interval_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": self.tail, "more_body": False})


def main() -> None:
    parser = server_args(__doc__.splitlines()[0])
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args()
    sock = prepare(args)
    app = Upstream(args.ttft_ms, args.chunks, args.interval_ms, args.echo)
    run_asgi(app, sock)


if __name__ == "__main__":
    main()
