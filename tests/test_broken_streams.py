"""An upstream stream that ends without its terminator, breaks, or stalls past `timeout_s`
ends for the client in an error frame the openai SDK raises on (never a quietly
truncated answer), then `[DONE]`; guarded or not; the audit says which."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import KEY, audit_records

GUARDED = {
    "upstream": "main",
    "output": {"policies": ["violence"], "window_chars": 16, "overlap_chars": 8},
}
TEXT = "say: one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def gw(make_gateway, upstream):
    slow = {"base_url": upstream[1].url + "/v1", "timeout_s": 0.5, "connect_timeout_s": 1}
    return make_gateway(
        guarded=GUARDED,
        stalled={"upstream": "slow"},
        gstalled={**GUARDED, "upstream": "slow"},
        raw={"upstreams": {"slow": slow}},
    )


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


CASES = [
    ("plain-cut", "upstream_dropped"),  # the open route: a plain relay
    ("guarded-cut", "upstream_dropped"),
    ("plain-drop", "upstream_dropped"),
    ("guarded-drop", "upstream_dropped"),
    ("stalled-stall", "upstream_timeout"),
    ("gstalled-stall", "upstream_timeout"),
]


@pytest.mark.parametrize(("model", "error"), CASES)
def test_chat_stream_the_upstream_broke_raises_in_the_sdk(gw, model, error) -> None:
    stream = sdk(gw).chat.completions.create(
        model=model, messages=[{"role": "user", "content": TEXT}], stream=True
    )
    with pytest.raises(openai.APIError, match="upstream"):
        list(stream)
    (record,) = audit_records(gw)
    assert record["error"] == error
    assert record["status"] == 200  # the headers had gone out


@pytest.mark.parametrize(("model", "error"), [CASES[0], CASES[1], CASES[4]])
def test_responses_stream_the_upstream_broke_raises_in_the_sdk(gw, model, error) -> None:
    stream = sdk(gw).responses.create(model=model, input=TEXT, stream=True)
    with pytest.raises(openai.APIError, match="upstream"):
        list(stream)
    (record,) = audit_records(gw)
    assert record["error"] == error


@pytest.mark.parametrize("model", ["plain-cut", "guarded-cut"])
def test_completions_stream_cut_ends_with_an_error_frame_then_done(gw, model) -> None:
    with httpx.stream(
        "POST",
        gw.base_url + "/completions",
        json={"model": model, "prompt": TEXT, "stream": True},
        headers={"authorization": f"Bearer {KEY}"},
    ) as response:
        body = response.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"code":"upstream_dropped"' in body.rsplit(b"\n\n", 3)[-3]


@pytest.mark.parametrize("model", ["plain-echo", "guarded-echo"])
def test_a_whole_stream_is_not_an_error(gw, model) -> None:
    chunks = list(
        sdk(gw).chat.completions.create(
            model=model, messages=[{"role": "user", "content": TEXT}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT.removeprefix("say: ")
    (record,) = audit_records(gw)
    assert record["error"] is None
