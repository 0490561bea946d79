"""What the client sees when the gateway intervenes: OpenAI/Azure error and filter shapes,
withheld completions, and the ASGI sender that knows whether headers went out."""

from __future__ import annotations

from typing import Any

from proxy.guard.engine import Outcome, SideResult
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES, OpenAIError
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


PROMPT_PARAM = {CHAT: "messages", COMPLETIONS: "prompt", RESPONSES: "input"}


class ClientDisconnected(Exception):
    pass


def content_filter_error(
    endpoint: str, blocked: list[Outcome], results: dict[str, Any]
) -> OpenAIError:
    names = ", ".join(f"'{o.policy.id}'" for o in blocked)
    return OpenAIError(
        400,
        f"The prompt was blocked by the gateway's content policy {names}. "
        "Please modify your prompt and retry.",
        code="content_filter",
        param=PROMPT_PARAM.get(endpoint, "messages"),
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


def withhold(endpoint: str, body: dict, choices: set[int | None]) -> None:
    """Blocked output: the text is removed and the choice finishes with content_filter."""
    if not choices:
        return
    if endpoint == RESPONSES:
        body["output"] = [i for i in body.get("output") or () if i.get("type") != "message"]
        body["status"] = "incomplete"
        body["incomplete_details"] = {"reason": "content_filter"}
        return
    for index, choice in enumerate(body.get("choices") or ()):
        if index in choices:
            choice["finish_reason"] = "content_filter"
            if endpoint == COMPLETIONS:
                choice["text"] = ""
            elif isinstance(choice.get("message"), dict):
                choice["message"]["content"] = None
                choice["message"].pop("tool_calls", None)


def annotate(endpoint: str, body: dict, inputs: SideResult, outputs: SideResult) -> None:
    """Azure-style filter results: prompt_filter_results and per-choice content_filter_results."""
    if inputs.outcomes:
        body["prompt_filter_results"] = [
            {"prompt_index": 0, "content_filter_results": inputs.filter_results()}
        ]
    if not outputs.outcomes or endpoint == RESPONSES:
        return
    for index, choice in enumerate(body.get("choices") or ()):
        mine = SideResult([o for o in outputs.outcomes if o.choice == index])
        choice["content_filter_results"] = mine.filter_results()


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

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if not any(name == b"content-type" for name, _ in headers):
            headers = [*headers, (b"content-type", JSON)]
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
