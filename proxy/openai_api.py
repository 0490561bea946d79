"""OpenAI wire basics: endpoints, the error shape, parsing a request body. Where each
endpoint's guardable text lives is its surface adapter's business (proxy/surfaces/)."""

from __future__ import annotations

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
