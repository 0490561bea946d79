"""A small Anthropic Messages API upstream on loopback: the real wire format, scripted
answers (plain ASGI, no framework).

The answer is the last user text prefixed with "echo: ", or, when that text starts with
"say:", exactly what follows it. Models script the rest: "tools" in the model answers with a text
block and a `tool_use` block whose input is {"query": <answer>} (streamed as
`input_json_delta` pieces), "thinking" with a `thinking` block holding the answer and
then the text "done", "fail-<status>" with that status and Anthropic's error body,
"hang" never answers, "drop" breaks the stream after a few events. Streams use the real event names:
message_start, content_block_start, ping, content_block_delta, content_block_stop,
message_delta, message_stop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.fakes.upstream import pieces

UPSTREAM_ID = "msg_fake_01"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


def _user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "".join(
            b.get("text", "")
            for b in content or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def answer_for(body: dict) -> str:
    text = _user_text(body)
    return text[4:].removeprefix(" ") if text.lower().startswith("say:") else f"echo: {text}"


def content_for(body: dict) -> list[dict[str, Any]]:
    model, text = str(body.get("model", "")), answer_for(body)
    if "tools" in model:
        return [
            {"type": "text", "text": "Let me look that up."},
            {"type": "tool_use", "id": "toolu_01", "name": "search", "input": {"query": text}},
        ]
    if "thinking" in model:
        return [
            {"type": "thinking", "thinking": text, "signature": "sig-fake"},
            {"type": "text", "text": "done"},
        ]
    return [{"type": "text", "text": text}]


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def stream_events(message: dict[str, Any], json_piece: int = 7) -> list[bytes]:
    """The message as the Messages API streams it."""
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    frames = [sse({"type": "message_start", "message": start}), sse({"type": "ping"})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"])]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            opening = {**block, "input": {}}
            raw = orjson.dumps(block["input"]).decode()
            deltas = [
                {"type": "input_json_delta", "partial_json": raw[i : i + json_piece]}
                for i in range(0, len(raw), json_piece)
            ]
        frames.append(
            sse({"type": "content_block_start", "index": index, "content_block": opening})
        )
        frames += [sse({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        frames.append(sse({"type": "content_block_stop", "index": index}))
    frames.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            }
        )
    )
    frames.append(sse({"type": "message_stop"}))
    return frames


def error(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}


@dataclass
class FakeAnthropic:
    requests: list[Seen] = field(default_factory=list)
    chunk_delay_s: float = 0.0

    def reset(self) -> None:
        self.requests.clear()
        self.chunk_delay_s = 0.0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        body = orjson.loads(raw) if raw else None
        self.requests.append(Seen(path, headers, body))
        if path == "/v1/models" and method == "GET":
            data = [{"type": "model", "id": "claude-fake", "display_name": "Fake"}]
            await self._json(send, 200, {"data": data, "has_more": False})
        elif path == "/v1/messages/count_tokens" and method == "POST":
            await self._json(send, 200, {"input_tokens": len(orjson.dumps(body)) // 4})
        elif path == "/v1/messages" and method == "POST":
            await self._messages(send, body)
        else:
            await self._json(send, 404, error(404, f"no route {method} {path}"))

    async def _messages(self, send: Any, body: dict) -> None:
        model = str(body.get("model", ""))
        if "fail-" in model:
            status = int(model.partition("fail-")[2])
            await self._json(send, status, error(status, f"scripted failure {status}"))
            return
        content = content_for(body)
        message = {
            "id": UPSTREAM_ID,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if "tools" in model else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": len(_user_text(body).split()) + 3, "output_tokens": 5},
        }
        if "hang" in model:
            await asyncio.sleep(3600)
        if not body.get("stream"):
            await self._json(send, 200, message)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        for i, chunk in enumerate(stream_events(message)):
            if "drop" in model and i == 4:
                raise ConnectionResetError("scripted drop mid-stream")
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _json(send: Any, status: int, data: Any) -> None:
        body = orjson.dumps(data)
        headers = [(b"content-type", b"application/json"), (b"request-id", b"req_upstream_1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
