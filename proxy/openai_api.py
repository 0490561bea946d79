"""OpenAI wire shapes: error bodies, the guardable text of requests and responses.

Text lives in many places (chat messages and their content parts, tool results, a
completions prompt, Responses API input items). `Slot`s point at each place so a policy
can read the text and redaction can write it back without rebuilding the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
MODELS = "/v1/models"
GENERATION_ENDPOINTS = (CHAT, COMPLETIONS, RESPONSES)

OPERATION = {
    CHAT: "chat",
    COMPLETIONS: "text_completion",
    RESPONSES: "chat",
    EMBEDDINGS: "embeddings",
    "/v1/messages": "chat",
}


class OpenAIError(Exception):
    """An error the client sees, in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra or {}

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error | self.extra})


def bad_request(
    message: str, code: str = "invalid_request", param: str | None = None
) -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


@dataclass(slots=True)
class Slot:
    """One place in a JSON body that holds guardable text."""

    holder: dict[str, Any] | list[Any]
    key: str | int
    role: str

    @property
    def text(self) -> str:
        value = self.holder[self.key]  # type: ignore[index]
        return value if isinstance(value, str) else ""

    @text.setter
    def text(self, value: str) -> None:
        self.holder[self.key] = value  # type: ignore[index]


def _content_slots(holder: dict[str, Any], key: str, role: str) -> Iterator[Slot]:
    """A message's content: a string, or a list of parts of which text parts count."""
    content = holder.get(key)
    if isinstance(content, str):
        yield Slot(holder, key, role)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield Slot(part, "text", role)
            elif isinstance(part, dict) and isinstance(part.get("output"), str):
                yield Slot(part, "output", role)


def _messages(body: dict[str, Any], endpoint: str) -> Iterator[tuple[str, list[Slot]]]:
    """(role, slots) per turn, in order, read the way this endpoint's API defines them."""
    if endpoint == "/v1/messages":
        from proxy.anthropic_api import turns  # imports this module: Slot, OpenAIError

        yield from turns(body)
        return
    if endpoint == COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            yield "user", [Slot(body, "prompt", "user")]
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            yield "user", [Slot(prompt, i, "user") for i in range(len(prompt))]
        elif prompt is not None:
            # Token ids cannot be read without the upstream's tokenizer: never let them by.
            raise bad_request(
                "A guarded route needs the prompt as text, not token ids.", param="prompt"
            )
        return
    if endpoint == RESPONSES:
        if isinstance(body.get("instructions"), str):
            yield "system", [Slot(body, "instructions", "system")]
        items = body.get("input")
        if isinstance(items, str):
            yield "user", [Slot(body, "input", "user")]
            return
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call_output":
                output = item.get("output")
                yield "tool", [Slot(item, "output", "tool")] if isinstance(output, str) else []
            elif "content" in item:
                role = str(item.get("role", "user"))
                yield role, list(_content_slots(item, "content", role))
        return
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            role = str(message.get("role", "user"))
            yield role, list(_content_slots(message, "content", role))


def input_slots(body: dict[str, Any], scope: str, endpoint: str = CHAT) -> list[Slot]:
    """The request text a policy of this scope reads (and redaction may rewrite)."""
    turns = list(_messages(body, endpoint))
    if scope == "last_user":
        for role, slots in reversed(turns):
            if role == "user":
                return slots
        return []
    if scope == "assistant":
        return [slot for role, slots in turns if role == "assistant" for slot in slots]
    return [slot for _, slots in turns for slot in slots]


def render(slots: list[Slot], scope: str) -> str:
    """The text handed to the classifier: plain for one turn, role-labelled for a conversation."""
    if scope == "conversation":
        return "\n\n".join(f"[{slot.role}] {slot.text}" for slot in slots if slot.text)
    return "\n".join(slot.text for slot in slots if slot.text)


def output_slots(endpoint: str, body: dict[str, Any]) -> list[list[Slot]]:
    """Completion text per choice (per output message for the Responses API)."""
    if endpoint == RESPONSES:
        per_item = []
        for item in body.get("output") or []:
            if isinstance(item, dict) and item.get("type") == "message":
                per_item.append(list(_content_slots(item, "content", "assistant")))
        return per_item
    choices = body.get("choices") or []
    if endpoint == COMPLETIONS:
        return [[Slot(c, "text", "assistant")] for c in choices if isinstance(c, dict)]
    return [
        list(_content_slots(c["message"], "content", "assistant"))
        for c in choices
        if isinstance(c, dict) and isinstance(c.get("message"), dict)
    ]


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"We could not parse the JSON body of your request: {exc}", "invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "invalid_json")
    return body
