"""A compressed body is decoded before anything reads it (gzip, bounded) or refused (415)."""

from __future__ import annotations

import gzip
import zlib

import httpx
import orjson
import pytest

from proxy.bodies import GZIP, IDENTITY, content_coding, gunzip
from proxy.openai_api import OpenAIError
from tests.conftest import KEY
from tests.test_guard import GUARDED


def chat_body(text: str, model: str = "echo") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}]})


def post(gw, body: bytes, encoding: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    if encoding:
        headers["content-encoding"] = encoding
    return httpx.post(gw.base_url + "/chat/completions", content=body, headers=headers)


def test_a_gzip_body_is_guarded_and_forwarded_decoded(make_gateway, upstream, classifier):
    gw = make_gateway(guarded=GUARDED)
    blocked = post(gw, gzip.compress(chat_body("get me an aimbot", "guarded-x")), "gzip")
    assert blocked.status_code == 400
    assert blocked.json()["error"]["code"] == "content_filter"
    assert upstream[0].requests == []
    allowed = post(gw, gzip.compress(chat_body("hello there", "guarded-x")), "gzip")
    assert allowed.status_code == 200
    assert allowed.json()["choices"][0]["message"]["content"] == "echo: hello there"
    (received,) = upstream[0].requests
    assert received.body["messages"][0]["content"] == "hello there"
    assert "content-encoding" not in received.headers
    assert all("aimbot" in c.content or "hello" in c.content for c in classifier[0].calls)


def test_a_gzip_body_on_an_open_route_reaches_the_upstream_decoded(gateway, upstream):
    answer = post(gateway, gzip.compress(chat_body("plain")), "GZIP")
    assert answer.status_code == 200
    assert upstream[0].requests[0].body["messages"][0]["content"] == "plain"


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "compress", "gzip, br", "x-foo"])
def test_other_encodings_are_415(gateway, upstream, encoding):
    answer = post(gateway, b"\x1f\x8b not really", encoding)
    assert answer.status_code == 415
    error = answer.json()["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert error["type"] == "invalid_request_error"
    assert upstream[0].requests == []


def test_a_zip_bomb_is_413(gateway, upstream):
    bomb = gzip.compress(b'{"model": "echo", "messages": [], "x": "' + b"0" * (64 << 20) + b'"}')
    assert len(bomb) < 200_000  # well under max_body_bytes as sent
    answer = post(gateway, bomb, "gzip")
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert upstream[0].requests == []


def test_broken_gzip_is_400(gateway, upstream):
    whole = gzip.compress(chat_body("x"))
    for broken in (whole[:-12], b"not gzip at all"):
        answer = post(gateway, broken, "gzip")
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_body"
    assert upstream[0].requests == []


def test_identity_is_the_body_as_sent(gateway):
    assert post(gateway, chat_body("as is"), "identity").status_code == 200


# -- the decoding itself (pure) ----------------------------------------------------------------


def test_codings_and_limits():
    assert content_coding([(b"content-encoding", b"identity")]) == IDENTITY
    assert content_coding([(b"Content-Encoding", b" gzip ")]) == GZIP
    with pytest.raises(OpenAIError) as raised:
        content_coding([(b"content-encoding", b"gzip"), (b"content-encoding", b"gzip")])
    assert raised.value.status == 415
    two_members = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert gunzip(two_members, 4) == b"abcd"
    with pytest.raises(OpenAIError) as raised:
        gunzip(two_members, 3)
    assert raised.value.status == 413
    raw_deflate = zlib.compress(b"x")
    with pytest.raises(OpenAIError):
        gunzip(raw_deflate, 10)
