"""An upstream that answers every POST with a body the test sets (`answer`), or with the
server-sent events it sets (`events`: each a JSON object, or bytes sent as they are), or by
default a minimal valid answer for the path; it reads nothing of the request, so it never
fails on what the gateway forwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

DEFAULTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                     "finish_reason": "stop"}],
    },
    "/v1/completions": {
        "id": "cmpl-s", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "fine", "finish_reason": "stop"}],
    },
    "/v1/responses": {
        "id": "resp_s", "object": "response", "created_at": 1, "model": "m",
        "status": "completed",
        "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "fine", "annotations": []}]}],
    },
}  # fmt: skip


class Scripted:
    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None
        self.events: list[dict[str, Any] | bytes] | None = None
        self.requests: list[bytes] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.requests.append(b"".join(chunks))
        if self.events is not None:
            await send_events(send, self.events)
            return
        answer = self.answer if self.answer is not None else DEFAULTS.get(scope["path"], {})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})


async def send_events(send: Any, events: list[dict[str, Any] | bytes]) -> None:
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        if isinstance(event, dict):
            name = f"event: {event['type']}\n".encode() if "type" in event else b""
            event = name + b"data: " + orjson.dumps(event) + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def scripted_upstream() -> Iterator[tuple[Scripted, Any]]:
    """A Scripted upstream served on loopback for the `with` block."""
    from tests.fakes.serve import serve

    app = Scripted()
    handle = serve(app)
    try:
        yield app, handle
    finally:
        handle.stop()
