"""A stand-in for SGLang serving gpt-oss-safeguard: same wire format, rule-based verdicts.

A policy text containing `<!-- triggers: word1, word2 -->` flags content that contains any
trigger (case-insensitive); `<!-- category: X -->` sets the reported category.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.upstream import hold

_TRIGGERS = re.compile(r"<!--\s*triggers:\s*(.*?)\s*-->")
_CATEGORY = re.compile(r"<!--\s*category:\s*(.*?)\s*-->")


@dataclass
class Call:
    policy: str
    content: str
    reasoning_effort: str | None
    at: float


@dataclass
class FakeSafeguard:
    mode: str = "ok"  # ok | garbage | error500 | timeout
    delay_s: float = 0.0
    format: str = "json"  # json | bare | harmony
    calls: list[Call] = field(default_factory=list)
    hung_up: int = 0  # calls whose caller went away during `delay_s`

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models),
                Route("/health", self.health),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    def reset(self) -> None:
        self.mode, self.delay_s, self.format = "ok", 0.0, "json"
        self.hung_up = 0
        self.calls.clear()

    def calls_for(self, marker: str) -> list[Call]:
        return [c for c in self.calls if marker in c.policy]

    @staticmethod
    def judge(policy: str, content: str) -> tuple[int, str]:
        match = _TRIGGERS.search(policy)
        triggers = [t.strip().lower() for t in match.group(1).split(",")] if match else []
        category = _CATEGORY.search(policy)
        hit = any(t and t in content.lower() for t in triggers)
        return int(hit), category.group(1) if category else "V1"

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        messages = body["messages"]
        policy = next(m["content"] for m in messages if m["role"] == "system")
        content = next(m["content"] for m in messages if m["role"] == "user")
        self.calls.append(Call(policy, content, body.get("reasoning_effort"), time.monotonic()))
        if self.delay_s and not await hold(request, self.delay_s):
            self.hung_up += 1
            return Response(status_code=499)
        if self.mode == "timeout":
            await asyncio.sleep(3600)
        if self.mode == "error500":
            return JSONResponse(
                {
                    "object": "error",
                    "message": "CUDA out of memory",
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                },
                status_code=500,
            )
        violation, category = self.judge(policy, content)
        reasoning = f"The policy asks whether the content violates it. Verdict {violation}."
        if self.mode == "garbage":
            answer = "I think this is probably fine?"
        elif self.format == "bare":
            answer = str(violation)
        else:
            answer = orjson.dumps(
                {
                    "violation": violation,
                    "policy_category": category if violation else None,
                    "rationale": "Matches a trigger." if violation else "No trigger found.",
                }
            ).decode()
        message = {
            "role": "assistant",
            "content": answer,
            "reasoning_content": reasoning,
            "tool_calls": None,
        }
        if self.format == "harmony":
            message = {"role": "assistant", "content": f"analysis{reasoning}assistantfinal{answer}"}
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "stop",
                        "matched_stop": 200012,
                    }
                ],
                "usage": {
                    "prompt_tokens": 400,
                    "completion_tokens": 40,
                    "total_tokens": 440,
                    "reasoning_tokens": 30,
                },
            }
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": "openai/gpt-oss-safeguard-20b", "object": "model", "owned_by": "sglang"}
                ],
            }
        )

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)
