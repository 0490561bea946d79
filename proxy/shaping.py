"""What the client sees when the gateway intervenes: OpenAI/Azure error shapes (withheld
answers and annotations are per surface: proxy/surfaces/), and the ASGI sender that
knows whether headers went out."""

from __future__ import annotations

from typing import Any

from proxy.guard.engine import Outcome
from proxy.openai_api import OpenAIError
from proxy.upstream import UpstreamError

JSON = b"application/json"


def error_from_upstream(exc: UpstreamError) -> OpenAIError:
    return OpenAIError(exc.status, exc.message, type="server_error", code=exc.code)


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body exceeds the gateway's limit of {limit} bytes.",
        code="request_too_large",
    )


class ClientDisconnected(Exception):
    pass


def content_filter_error(
    param: str, blocked: list[Outcome], results: dict[str, Any]
) -> OpenAIError:
    names = ", ".join(f"'{o.policy.id}'" for o in blocked)
    return OpenAIError(
        400,
        f"The prompt was blocked by the gateway's content policy {names}. "
        "Please modify your prompt and retry.",
        code="content_filter",
        param=param,
        extra={
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results}
        },
    )


def guard_unavailable() -> OpenAIError:
    return OpenAIError(
        503,
        "The content guard (gpt-oss-safeguard) is unavailable and this route fails closed. "
        "Retry later.",
        type="server_error",
        code="guard_unavailable",
    )


class Sender:
    """ASGI send with the response state tracked (so errors know whether headers went out)."""

    __slots__ = ("_receive", "_send", "started")

    def __init__(self, send: Any, receive: Any) -> None:
        self._send, self._receive = send, receive
        self.started = False

    async def disconnected(self) -> None:
        """Returns once the client has gone (uvicorn's send then drops data silently)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, chunk: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if not any(name == b"content-type" for name, _ in headers):
            headers = [*headers, (b"content-type", JSON)]
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
