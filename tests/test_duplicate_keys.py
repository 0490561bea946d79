"""A JSON key given twice: orjson (the gateway's parser) keeps the last, other parsers the
first. A guarded request goes upstream as the guard read it, so a first-wins upstream
cannot act on text nobody classified; where the model picks the route, a repeated key in a
body naming `model` twice is refused before any upstream call."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest

from proxy.bodies import as_read, refuse_repeated_model
from proxy.openai_api import OpenAIError
from tests.anthropic_support import claude_gateway
from tests.conftest import KEY
from tests.test_input_coverage import FLAGGED, GUARDED, POLICIES

HEADERS = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}


def first_wins(raw: bytes) -> Any:
    """How a parser that keeps the first of a repeated key reads the bytes."""
    return json.loads(raw, object_pairs_hook=lambda pairs: dict(reversed(pairs)))


def send(gw, path: str, raw: str) -> httpx.Response:
    return httpx.post(gw.base_url + path, content=raw.encode(), headers=HEADERS, timeout=10)


def test_a_first_wins_upstream_reads_only_the_classified_text(make_gateway, upstream) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    raw = (
        '{"model": "guarded-1", "messages": [{"role": "user", '
        f'"content": "{FLAGGED}", "content": "hello there"}}]}}'
    )
    reply = send(gw, "/chat/completions", raw)
    assert reply.status_code == 200, reply.text  # the gateway classified "hello there"
    seen = upstream[0].requests[-1].raw
    assert FLAGGED.encode() not in seen
    assert first_wins(seen)["messages"] == [{"role": "user", "content": "hello there"}]


def test_the_flagged_last_duplicate_is_the_one_classified(make_gateway, upstream) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    raw = (
        '{"model": "guarded-1", "messages": [{"role": "user", '
        f'"content": "hello there", "content": "{FLAGGED}"}}]}}'
    )
    reply = send(gw, "/chat/completions", raw)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "content_filter"
    assert upstream[0].requests == []


def test_a_repeated_model_cannot_pick_an_unguarded_route(make_gateway, upstream) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    # Routed by the last model (open, pass-through); a first-wins upstream would serve the
    # guarded model with a prompt its policies never read.
    raw = (
        '{"model": "guarded-1", "model": "gpt-open", '
        f'"messages": [{{"role": "user", "content": "{FLAGGED}"}}]}}'
    )
    reply = send(gw, "/chat/completions", raw)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "duplicate_key",
        "model",
        "invalid_request_error",
    )
    assert upstream[0].requests == []


def test_the_anthropic_shape_on_messages(make_gateway, messages_upstream) -> None:
    gw = claude_gateway(make_gateway, messages_upstream, claude={})
    raw = '{"model": "claude-1", "model": "other", "max_tokens": 8, "messages": []}'
    reply = httpx.post(gw.url + "/v1/messages", content=raw, headers=HEADERS, timeout=10)
    assert reply.status_code == 400
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "'model'" in body["error"]["message"]
    assert messages_upstream[0].requests == []


def test_pass_through_bodies_keep_their_bytes(make_gateway, upstream) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    raw = '{"model":  "gpt-open", "messages": [{"role": "user", "content": "model"}]}'
    assert send(gw, "/chat/completions", raw).status_code == 200
    assert upstream[0].requests[-1].raw == raw.encode()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "messages": [{"model": 1, "x": 2, "x": 3}]}',
        b'{"model": "a", "stream": true, "model": "b"}',
        b'{"model": "a", "mod\\u0065l": "b", "messages": []}',  # the same key, escaped
        b'{"m\\u006fdel": "a", "model": "b"}',
    ],
)
def test_any_repeated_key_is_refused_when_model_appears_twice(raw: bytes) -> None:
    with pytest.raises(OpenAIError) as err:
        refuse_repeated_model(raw)
    assert err.value.status == 400 and err.value.code == "duplicate_key"


def test_a_body_without_two_models_is_not_parsed_again() -> None:
    refuse_repeated_model(b'{"model": "a", "x": 1, "x": 2}')  # routing is not ambiguous
    refuse_repeated_model(b'{"model": "a", "x": "caf\\u00e9", "x": "\\u00e9"}')  # escaped values


def test_too_deep_to_rewrite_goes_as_sent_unless_a_key_repeats() -> None:
    raw = b'{"messages": ' + b"[" * 300 + b'{"a": 1, "a": 2}' + b"]" * 300 + b"}"
    with pytest.raises(OpenAIError) as err:
        as_read(orjson.loads(raw), raw)
    assert err.value.status == 400 and err.value.param == "a"
    raw = raw.replace(b'"a": 2', b'"b": 2')
    assert as_read(orjson.loads(raw), raw) is raw
