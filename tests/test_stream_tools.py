"""Streamed tool calls, legacy function calls, refusals and every choice of n > 1 go
through the output windows like text: through the openai SDK against the fake upstream."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import KEY, audit_records

FLAGGED = "say: please kill them all tonight at the usual place"
HARMLESS = "say: the weather in Paris tomorrow"


def route(stream: str) -> dict:
    # One 64-character window: the flagged phrase is never split over a released window.
    return {
        "upstream": "main",
        "output": {
            "first_window_chars": 64,
            "policies": ["violence"],
            "stream": stream,
            "window_chars": 64,
            "overlap_chars": 16,
        },
    }


@pytest.fixture(params=["window", "buffer"])
def gw(request, make_gateway):
    return make_gateway(guarded=route(request.param))


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


def chat_stream(gw, model: str, text: str, **extra) -> list:
    return list(
        sdk(gw).chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], stream=True, **extra
        )
    )


def streamed(chunks: list, pick) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = pick(choice.delta)
            if piece:
                out[choice.index] = out.get(choice.index, "") + piece
    return out


def tool_args(delta) -> str:
    return "".join(t.function.arguments or "" for t in delta.tool_calls or () if t.function)


def legacy_args(delta) -> str:
    return delta.function_call.arguments if delta.function_call else ""


def finishes(chunks: list) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


SHAPES = [
    ("guarded-tool-args", tool_args, "lookup"),
    ("guarded-function-call", legacy_args, "lookup"),
    ("guarded-refusal", lambda d: d.refusal, None),
]


@pytest.mark.parametrize(
    ("model", "pick", "tool"), SHAPES, ids=["tool_calls", "function_call", "refusal"]
)
def test_flagged_streamed_arguments_never_reach_the_client(gw, model, pick, tool) -> None:
    chunks = chat_stream(gw, model, FLAGGED)
    assert "kill" not in "".join(streamed(chunks, pick).values())
    assert finishes(chunks) == ["content_filter"]
    (record,) = audit_records(gw)
    flagged = [v for v in record["verdicts"] if v["label"] == "violation"]
    assert flagged and record["decision"] == "block"
    assert {v.get("tool") for v in flagged} == {tool}


@pytest.mark.parametrize(("model", "pick", "tool"), SHAPES[:2], ids=["tool_calls", "function_call"])
def test_harmless_streamed_arguments_arrive_whole(gw, model, pick, tool) -> None:
    chunks = chat_stream(gw, model, HARMLESS)
    assert json.loads(streamed(chunks, pick)[0]) == {"query": "the weather in Paris tomorrow"}
    assert finishes(chunks) == ["tool_calls" if model.endswith("tool-args") else "function_call"]


def test_every_choice_of_n_is_guarded(gw) -> None:
    chunks = chat_stream(gw, "guarded-tool-args", FLAGGED, n=2)
    assert all("kill" not in text for text in streamed(chunks, tool_args).values())
    assert sorted(c.index for chunk in chunks for c in chunk.choices if c.finish_reason) == [0, 1]
    assert set(finishes(chunks)) == {"content_filter"}
    text_chunks = chat_stream(gw, "guarded-echo", FLAGGED, n=3)
    assert all("kill" not in t for t in streamed(text_chunks, lambda d: d.content).values())


def test_responses_function_call_arguments_are_guarded(gw) -> None:
    events = list(sdk(gw).responses.create(model="guarded-tool-args", input=FLAGGED, stream=True))
    assert not any("kill" in (getattr(e, "delta", "") or "") for e in events)
    assert not any("kill" in (getattr(e, "arguments", "") or "") for e in events)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    (record,) = audit_records(gw)
    assert {v.get("tool") for v in record["verdicts"] if v["label"] == "violation"} == {"lookup"}


def test_responses_harmless_function_call_streams_through(gw) -> None:
    stream = sdk(gw).responses.create(model="guarded-tool-args", input=HARMLESS, stream=True)
    events = list(stream)
    assert events[-1].type == "response.completed"
    (item,) = events[-1].response.output
    assert item.name == "lookup" and json.loads(item.arguments)["query"].startswith("the weather")


# --- the output verdict rides on the stream's last chunk ----------------------------------


def test_a_stream_carries_its_output_verdict_on_the_finishing_chunk(make_gateway) -> None:
    gw = make_gateway(
        guarded={
            "upstream": "main",
            "input": {"policies": ["cheating"]},
            "output": {"policies": ["spam"]},
        }
    )
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="guarded-echo",
        messages=[{"role": "user", "content": "say: buy now, cheap"}],
        stream=True,
    )
    # Headers go out before the answer exists: they carry the input decision only.
    assert raw.headers["x-safeguard-decision"] == "allow"
    chunks = list(raw.parse())
    (finishing,) = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishing.finish_reason == "stop"
    assert finishing.model_extra["content_filter_results"] == {
        "spam": {"filtered": False, "detected": True, "category": "SP1"}
    }
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "buy now, cheap"
    )
    (record,) = audit_records(gw)
    assert record["decision"] == "annotate"


def test_a_responses_stream_carries_its_output_verdict_on_response_completed(make_gateway) -> None:
    gw = make_gateway(guarded={"upstream": "main", "output": {"policies": ["spam"]}})
    events = list(sdk(gw).responses.create(model="guarded-echo", input="say: hello", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.model_extra["content_filter_results"] == {
        "spam": {"filtered": False, "detected": False}
    }
