"""A minimal SGLang-shaped gpt-oss-safeguard stand-in for benchmarks: raw ASGI, no parsing.

`POST /v1/chat/completions` waits `--delay-ms` and answers a fixed chat completion whose
`message.content` is `{"violation":0,...}` with `reasoning_content`, as SGLang does with
`--reasoning-parser gpt-oss`. `GET /v1/models` and `GET /health` for readiness;
`GET /stats` -> {"calls": n}.

    python -m tests.bench.classifier [--port 0] [--delay-ms 0]
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tests.bench.common import prepare, read_body, run_asgi, send_bytes, server_args

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-safeguard",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "openai/gpt-oss-safeguard-20b",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": orjson.dumps(
                        {"violation": 0, "policy_category": None, "rationale": "No match."}
                    ).decode(),
                    "reasoning_content": "The content does not match any VIOLATES rule. "
                    "It is safe under the policy.",
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
                "matched_stop": 200012,
            }
        ],
        "usage": {
            "prompt_tokens": 612,
            "completion_tokens": 38,
            "total_tokens": 650,
            "reasoning_tokens": 24,
        },
    }
)
MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": "openai/gpt-oss-safeguard-20b", "object": "model", "owned_by": "sglang"}],
    }
)


class Classifier:
    def __init__(self, delay_ms: float) -> None:
        self.delay_s = delay_ms / 1000
        self.calls = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "POST":
            await read_body(receive)
            self.calls += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            await send_bytes(send, ANSWER)
        elif path.endswith("/models"):
            await send_bytes(send, MODELS)
        elif path == "/stats":
            await send_bytes(send, orjson.dumps({"calls": self.calls}))
        else:
            await send_bytes(send, b"{}")


def main() -> None:
    parser = server_args(__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    sock = prepare(args)
    run_asgi(Classifier(args.delay_ms), sock)


if __name__ == "__main__":
    main()
