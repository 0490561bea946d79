"""Anthropic Messages API wire facts the gateway needs outside the surface adapter
(proxy/surfaces/messages.py): its endpoints, its default version and its error shape."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.openai_api import OpenAIError

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
ENDPOINTS = (MESSAGES, COUNT_TOKENS)
DEFAULT_VERSION = "2023-06-01"  # anthropic-version sent when the client gives none

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: OpenAIError, request_id: str | None = None) -> bytes:
    """A gateway error in Anthropic's shape: {"type": "error", "error": {type, message}}.

    The gateway's own `code` (e.g. guard_unavailable, content_filter) and a blocked
    prompt's per-policy results ride along as extra fields the SDKs ignore."""
    error: dict[str, Any] = {"type": error_type(exc.status), "message": exc.message}
    if exc.code:
        error["code"] = exc.code
    inner = exc.extra.get("innererror")
    if isinstance(inner, dict) and "content_filter_result" in inner:
        error["content_filter_result"] = inner["content_filter_result"]
    body: dict[str, Any] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def not_messages_route(route: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"Your route {route!r} does not lead to a Messages API upstream "
        "(its upstream needs `api: anthropic`).",
        code="route_not_anthropic",
    )
