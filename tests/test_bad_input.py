"""Bad input never 5xx: wrong types anywhere in a body, deep nesting (redaction included),
odd encodings get a 4xx in the OpenAI error shape or a clean pass. Property tests of the
surface adapters (pure) and of the guarded handler (loopback gateway, httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.openai_api import OpenAIError
from proxy.surfaces import SURFACES
from tests.conftest import KEY
from tests.fakes.scripted import Scripted, scripted_upstream
from tests.fakes.serve import ServerHandle

FIELDS = [
    "model", "messages", "role", "content", "text", "type", "name", "tool_calls", "function",
    "arguments", "output", "input", "instructions", "summary", "refusal", "tools",
    "description", "parameters", "properties", "prompt", "suffix", "variables", "choices",
    "message", "function_call", "functions", "response_format", "call_id", "stream", "n",
]  # fmt: skip
EMAIL = "jane.doe@example.com"

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["user", "assistant", "tool", "system", "text", "input_text",
                       "function_call", "function_call_output", "message", EMAIL, "aimbot"])
    | st.text(max_size=20)
)  # fmt: skip
keys = st.sampled_from(FIELDS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)
# Bodies shaped like the real ones (the fields each surface reads, each holding objects of
# the right keys or any JSON value), and bodies of any keys at all.
part = st.dictionaries(st.sampled_from(FIELDS[2:12]), json_values, max_size=4)
items = st.lists(part | json_values, max_size=4) | json_values
OPTIONAL = ("messages", "tools", "functions", "input", "instructions", "prompt", "suffix")
MAIN_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/responses": "input",
}
shaped = st.sampled_from(sorted(MAIN_FIELD)).flatmap(
    lambda path: st.fixed_dictionaries(
        {MAIN_FIELD[path]: items}, optional={k: items for k in OPTIONAL if k != MAIN_FIELD[path]}
    )
)
bodies = shaped | st.dictionaries(keys, json_values, max_size=6)


@pytest.mark.parametrize("endpoint", sorted(SURFACES))
@settings(max_examples=200, deadline=None)
@given(body=bodies)
def test_adapters_read_any_body_or_refuse_it_with_a_400(endpoint: str, body: dict) -> None:
    surface = SURFACES[endpoint]
    try:
        pieces = surface.input_pieces(body)
    except OpenAIError as exc:
        assert exc.status == 400
        assert orjson.loads(exc.body())["error"]["type"] == "invalid_request_error"
    else:
        assert all(isinstance(s.text, str) for p in pieces for s in p.slots)
    answer = surface.output_pieces(body)
    withheld = frozenset(p.choice for p in answer if p.choice is not None)
    orjson.dumps(surface.withhold(body, withheld))
    orjson.dumps(surface.annotate(body, {}, {i: {} for i in withheld}))


GUARDED = {
    "upstream": "scripted",
    "input": {"policies": ["cheating", "pii"]},
    "output": {"policies": ["violence"]},
}


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, ServerHandle]]:
    """An upstream that answers whatever it is sent: any 5xx is the gateway's own."""
    with scripted_upstream() as running:
        yield running


@pytest.fixture
def gw(make_gateway, scripted):
    scripted[0].requests.clear()
    return make_gateway(
        raw={"upstreams": {"scripted": {"base_url": scripted[1].url + "/v1", "api_key": "k"}}},
        guarded=GUARDED,
    )


def post(gw: Any, path: str, content: bytes) -> httpx.Response:
    return httpx.post(
        gw.base_url + path,
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=10,
    )


def assert_clean(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        body = reply.json()
        if body.get("type") == "error":  # the Messages API's own shape (/v1/messages)
            assert set(body["error"]) >= {"message", "type"}
        else:
            assert set(body["error"]) >= {"message", "type", "param", "code"}


def test_any_json_in_any_field_is_2xx_or_4xx(gw) -> None:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(path=st.sampled_from(sorted(SURFACES)), body=bodies)
    def check(path: str, body: dict) -> None:
        body = {**body, "model": "guarded-1"}
        assert_clean(post(gw, path.removeprefix("/v1"), orjson.dumps(body)))

    check()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"messages": 5}, "messages"),
        ("/chat/completions", {"messages": None}, "messages"),
        ("/chat/completions", {"messages": [None]}, "messages[0]"),
        ("/chat/completions", {"messages": [[]]}, "messages[0]"),
        ("/chat/completions", {"messages": [{"role": "user", "content": 5}]},
         "messages[0].content"),
        ("/chat/completions", {"messages": [{"role": "user", "content": [7]}]},
         "messages[0].content[0]"),
        ("/chat/completions", {"messages": [], "tools": "x"}, "tools"),
        ("/responses", {"input": {"role": "user"}}, "input"),
        ("/responses", {"input": [1]}, "input[0]"),
        ("/completions", {"prompt": {"text": "x"}}, "prompt"),
    ],
)  # fmt: skip
def test_wrong_types_are_400_naming_the_field(gw, scripted, path, body, param) -> None:
    reply = post(gw, path, orjson.dumps({"model": "guarded-1", **body}))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_type", param)
    assert scripted[0].requests == []


def deep_chat(depth: int, text: str) -> bytes:
    """A chat body whose user content is `depth` arrays deep (orjson cannot dump that)."""
    part = orjson.dumps({"type": "text", "text": text})
    content = b"[" * depth + part + b"]" * depth
    return b'{"model":"guarded-1","messages":[{"role":"user","content":' + content + b"}]}"


def test_deep_nesting_that_needs_a_rewrite_is_a_400(gw, scripted) -> None:
    """orjson re-encodes at most 255 levels: a redaction deeper than that cannot be sent."""
    reply = post(gw, "/chat/completions", deep_chat(300, f"mail {EMAIL}"))
    assert reply.status_code == 400, reply.text
    assert scripted[0].requests == []


def test_deep_nesting_without_a_rewrite_passes_as_sent(gw, scripted) -> None:
    raw = deep_chat(600, "hello")
    reply = post(gw, "/chat/completions", raw)
    assert_clean(reply)
    assert scripted[0].requests == [raw]  # forwarded byte for byte


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "guarded-1", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "guarded-1", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "guarded-1", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    ],
)
def test_odd_encodings_are_400(gw, raw: bytes) -> None:
    reply = post(gw, "/chat/completions", raw)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_json"
