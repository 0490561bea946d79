"""A small OpenAI-compatible upstream on loopback: the real wire format, scripted answers.

The answer to a chat/completions/responses request is the last user text prefixed with
"echo: ", or, when that text starts with "say:", exactly what follows it. Model names
script failures: "fail-<status>" answers that status with an OpenAI error body, "tools"
answers with a tool call, "drop" breaks the connection mid-answer, "hang" never answers;
chat models ending in "plain-text" answer text/plain, in "always-stream" always stream.
Streamed answers of models ending in "tool-args" carry the answer as the streamed arguments
of a `lookup` tool call (`{"query": answer}`; Chat and Responses), in "function-call" as
legacy `function_call` arguments, in "refusal" as `delta.refusal`; "-cut" ends the stream
cleanly without its terminator, "-stall" stops sending after a few events and holds the
connection, "-drop" (like "drop") breaks it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    query: str = ""
    raw: bytes = b""  # the body's bytes as they arrived


def user_text(body: dict) -> str:
    if "messages" in body:
        for message in reversed(body["messages"]):
            if message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    if "prompt" in body:
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else str(prompt[-1])
    items = body.get("input", "")
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("role", "user") == "user":
            return _text(item.get("content"))
    return ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def answer_for(body: dict) -> str:
    text = user_text(body)
    return text[4:].removeprefix(" ") if text.lower().startswith("say:") else f"echo: {text}"


def pieces(text: str, size: int = 0) -> list[str]:
    """Stream deltas: word by word, or `size` characters at a time."""
    if size:
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]
    return re.findall(r"\s*\S+", text) or [""]


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def hold(request: Request, seconds: float) -> bool:
    """Wait `seconds` before answering; False as soon as the caller hangs up instead."""
    gone = asyncio.ensure_future(request.receive())  # the body is read: only a disconnect
    try:
        await asyncio.wait_for(asyncio.shield(gone), seconds)
    except TimeoutError:
        return True
    finally:
        gone.cancel()
    return gone.result()["type"] != "http.disconnect"


async def _cut_short() -> AsyncIterator[bytes]:
    """Promise 1000 bytes, send a few, then break the connection."""
    yield b'{"id": "chatcmpl-'
    raise ConnectionResetError("scripted drop")


@dataclass
class FakeOpenAI:
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    streams_cancelled: int = 0
    chunk_chars: int = 0  # 0: one delta per word
    hung_up: int = 0  # requests whose caller went away while we held the answer back

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/models", self.models),
                Route("/v1/models/{model}", self.model),
                # Anything else is recorded (a gateway must never send it) and is a 404.
                Route("/{rest:path}", self.other, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    def reset(self) -> None:
        self.first_token_delay_s = self.chunk_delay_s = 0.0
        self.streams_cancelled = self.chunk_chars = self.hung_up = 0
        self.requests.clear()

    async def _receive(self, request: Request) -> tuple[dict, Response | None]:
        raw = await request.body()
        body = orjson.loads(raw)
        self.requests.append(Received(request.url.path, dict(request.headers), body, raw=raw))
        model = str(body.get("model", ""))
        if model.startswith("fail-"):
            status = int(model[5:])
            return body, JSONResponse(
                {
                    "error": {
                        "message": f"scripted failure {status}",
                        "type": "server_error" if status >= 500 else "invalid_request_error",
                        "param": None,
                        "code": f"scripted_{status}",
                    }
                },
                status_code=status,
            )
        if model == "hang":
            await asyncio.sleep(3600)
        if model == "drop" and not body.get("stream"):
            return body, StreamingResponse(
                _cut_short(), headers={"content-length": "1000"}, media_type="application/json"
            )
        if self.first_token_delay_s and not await hold(request, self.first_token_delay_s):
            self.hung_up += 1
        return body, None

    async def _stream(
        self, frames: list[bytes], *, drop: bool, stall: bool = False
    ) -> AsyncIterator[bytes]:
        try:
            for i, frame in enumerate(frames):
                if drop and i == 3:
                    raise ConnectionResetError("scripted drop mid-stream")
                if stall and i == 3:
                    await asyncio.sleep(3600)
                if self.chunk_delay_s and i:
                    await asyncio.sleep(self.chunk_delay_s)
                yield frame
        except (asyncio.CancelledError, GeneratorExit):
            self.streams_cancelled += 1
            raise

    def _sse_response(self, frames: list[bytes], body: dict) -> StreamingResponse:
        model = str(body.get("model"))
        if model.endswith("-cut"):  # ends cleanly, without [DONE] / response.completed
            frames = frames[: len(frames) // 2]
        return StreamingResponse(
            self._stream(
                frames,
                drop=model == "drop" or model.endswith("-drop"),
                stall=model.endswith("-stall"),
            ),
            media_type="text/event-stream",
        )

    @staticmethod
    def _usage(body: dict, text: str) -> dict:
        prompt_tokens = len(user_text(body).split()) + 3
        completion_tokens = len(text.split())
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def chat(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure:
            return failure
        text, model, n = answer_for(body), str(body.get("model")), int(body.get("n") or 1)
        if model.endswith("plain-text"):
            return Response(text, media_type="text/plain")
        if model.endswith("always-stream"):  # an upstream that streams whatever was asked
            body["stream"] = True
        tools = model == "tools"
        base = {
            "id": "chatcmpl-fake",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if not body.get("stream"):
            message = (
                {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
                if tools
                else {"role": "assistant", "content": text}
            )
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": i,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": "tool_calls" if tools else "stop",
                        }
                        for i in range(n)
                    ],
                    "usage": self._usage(body, text),
                    "x_upstream_extra": {"kept": True},
                }
            )
        chunk = {**base, "object": "chat.completion.chunk"}
        frames = [
            sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                        for i in range(n)
                    ],
                }
            )
        ]
        if body.get("stream") and model.endswith(("tool-args", "function-call", "refusal")):
            frames += _streamed_calls(chunk, model, text, n)
        elif tools:
            frames.append(
                sse(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"tool_calls": [{"index": 0, **TOOL_CALL}]},
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        else:
            for piece in pieces(text, self.chunk_chars):
                frames += [
                    sse(
                        {
                            **chunk,
                            "choices": [
                                {"index": i, "delta": {"content": piece}, "finish_reason": None}
                            ],
                        }
                    )
                    for i in range(n)
                ]
        frames += [
            sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": i,
                            "delta": {},
                            "finish_reason": _finish(model, tools),
                        }
                    ],
                }
            )
            for i in range(n)
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append(sse({**chunk, "choices": [], "usage": self._usage(body, text)}))
        frames.append(b"data: [DONE]\n\n")
        return self._sse_response(frames, body)

    async def completions(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure:
            return failure
        text = answer_for(body)
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
                    ],
                    "usage": self._usage(body, text),
                }
            )
        frames = [
            sse(
                {
                    **base,
                    "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}],
                }
            )
            for p in pieces(text)
        ]
        frames.append(
            sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
                    ],
                }
            )
        )
        frames.append(b"data: [DONE]\n\n")
        return self._sse_response(frames, body)

    async def embeddings(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": [float(len(str(x)) % 7), 0.5, -0.25],
                    }
                    for i, x in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def responses(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure:
            return failure
        text, model = answer_for(body), body.get("model")
        usage = self._usage(body, text)
        usage = {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        }
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        response = {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [item],
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(response)
        if str(model).endswith("tool-args"):
            return self._sse_response(_responses_call_events(response, text), body)
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict]] = [
            ("response.created", {"response": started}),
            ("response.in_progress", {"response": started}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
            ),
            (
                "response.content_part.added",
                {
                    "output_index": 0,
                    "item_id": "msg_fake",
                    "content_index": 0,
                    "part": {**part, "text": ""},
                },
            ),
        ]
        events += [
            (
                "response.output_text.delta",
                {"output_index": 0, "item_id": "msg_fake", "content_index": 0, "delta": p},
            )
            for p in pieces(text)
        ]
        events += [
            (
                "response.output_text.done",
                {"output_index": 0, "item_id": "msg_fake", "content_index": 0, "text": text},
            ),
            (
                "response.content_part.done",
                {"output_index": 0, "item_id": "msg_fake", "content_index": 0, "part": part},
            ),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response}),
        ]
        frames = [
            sse({"type": name, "sequence_number": i, **data}, event=name)
            for i, (name, data) in enumerate(events)
        ]
        return self._sse_response(frames, body)

    async def other(self, request: Request) -> Response:
        self.requests.append(
            Received(request.url.path, dict(request.headers), None, query=request.url.query)
        )
        return JSONResponse({"error": {"message": "not here", "code": "unknown_url"}}, 404)

    async def model(self, request: Request) -> Response:
        self.requests.append(
            Received(request.url.path, dict(request.headers), None, query=request.url.query)
        )
        return JSONResponse(
            {
                "id": request.path_params["model"],
                "object": "model",
                "created": 0,
                "owned_by": "fake",
            }
        )

    async def models(self, request: Request) -> Response:
        self.requests.append(
            Received(request.url.path, dict(request.headers), None, query=request.url.query)
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in ("echo", "gpt-4o-mini", "tools")
                ],
            }
        )


def _finish(model: str, tools: bool) -> str:
    if model.endswith("tool-args"):
        return "tool_calls"
    if model.endswith("function-call"):
        return "function_call"
    return "tool_calls" if tools else "stop"


def _streamed_calls(chunk: dict, model: str, text: str, n: int) -> list[bytes]:
    """Deltas carrying the answer as tool-call / function-call arguments or a refusal."""

    def delta(i: int, piece: str, first: bool) -> dict:
        if model.endswith("refusal"):
            return {"refusal": piece}
        function = {"name": "lookup", "arguments": piece} if first else {"arguments": piece}
        if model.endswith("function-call"):
            return {"function_call": function}
        call = {"index": 0, "function": function}
        if first:
            call |= {"id": f"call_{i}", "type": "function"}
        return {"tool_calls": [call]}

    arguments = text if model.endswith("refusal") else orjson.dumps({"query": text}).decode()
    frames = []
    for j, piece in enumerate(["", *pieces(arguments)]):
        for i in range(n):
            choice = {"index": i, "delta": delta(i, piece, j == 0), "finish_reason": None}
            frames.append(sse({**chunk, "choices": [choice]}))
    return frames


def _responses_call_events(response: dict, text: str) -> list[bytes]:
    """A Responses stream whose one output item is a `lookup` function call."""
    arguments = orjson.dumps({"query": text}).decode()
    item = {
        "type": "function_call",
        "id": "fc_fake",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": arguments,
        "status": "completed",
    }
    done = {**response, "output": [item]}
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str, dict]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "arguments": "", "status": "in_progress"}},
        ),
    ]
    events += [
        (
            "response.function_call_arguments.delta",
            {"output_index": 0, "item_id": "fc_fake", "delta": p},
        )
        for p in pieces(arguments)
    ]
    events += [
        (
            "response.function_call_arguments.done",
            {"output_index": 0, "item_id": "fc_fake", "arguments": arguments},
        ),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": done}),
    ]
    return [
        sse({"type": name, "sequence_number": i, **data}, event=name)
        for i, (name, data) in enumerate(events)
    ]
