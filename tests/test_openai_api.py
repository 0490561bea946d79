"""proxy/openai_api.py: parsing request bodies and the error shape (the text a policy reads
is tested per surface in test_surfaces.py)."""

from __future__ import annotations

import orjson
import pytest

from proxy.openai_api import OpenAIError, parse_json_body

# --- JSON bodies and errors --------------------------------------------------------------


def test_parse_json_body_returns_the_object() -> None:
    assert parse_json_body(b'{"model": "m", "n": 2}') == {"model": "m", "n": 2}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": ', "could not parse the JSON body"),
        (b"", "could not parse the JSON body"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ],
)
def test_parse_json_body_errors_are_400_invalid_json(raw: bytes, message: str) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_json_body(raw)
    assert info.value.status == 400
    error = orjson.loads(info.value.body())["error"]
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_openai_error_body_shape() -> None:
    error = OpenAIError(404, "The model 'x' does not exist", code="model_not_found", param="model")
    assert orjson.loads(error.body()) == {
        "error": {
            "message": "The model 'x' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_openai_error_body_carries_extra_fields() -> None:
    extra = {"innererror": {"code": "ResponsibleAIPolicyViolation"}}
    error = OpenAIError(
        503, "guard down", type="server_error", code="guard_unavailable", extra=extra
    )
    body = orjson.loads(error.body())["error"]
    assert body["type"] == "server_error"
    assert body["param"] is None
    assert body["innererror"] == {"code": "ResponsibleAIPolicyViolation"}
