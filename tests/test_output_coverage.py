"""No output bypass for whole answers: tool-call arguments (Chat `tool_calls`, legacy
`function_call`, Responses `function_call` items), refusals and every choice of n > 1 are
classified like content; a flagged one is withheld and the audit names the tool."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import KEY, audit_records
from tests.fakes.scripted import Scripted, scripted_upstream
from tests.fakes.serve import ServerHandle

FLAGGED = "kill them all"  # the violence policy's trigger


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, ServerHandle]]:
    with scripted_upstream() as running:
        yield running


@pytest.fixture
def gw(make_gateway, scripted):
    return make_gateway(
        raw={"upstreams": {"scripted": {"base_url": scripted[1].url + "/v1", "api_key": "k"}}},
        guarded={"upstream": "scripted", "output": {"policies": ["violence", "spam"]}},
    )


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


def completion(*messages: dict, finish: str = "stop") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", **m}, "finish_reason": finish}
            for i, m in enumerate(messages)
        ],
    }


def call(name: str, arguments: str) -> dict:
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


def ask(gw):
    return sdk(gw).chat.completions.with_raw_response.create(
        model="guarded-1", messages=[{"role": "user", "content": "hi"}]
    )


def test_flagged_tool_call_arguments_are_withheld_and_the_audit_names_the_tool(gw, scripted):
    scripted[0].answer = completion(
        {"content": None, "tool_calls": [call("send_email", f'{{"body": "{FLAGGED}"}}')]},
        finish="tool_calls",
    )
    raw = ask(gw)
    reply = raw.parse()
    assert raw.headers["x-safeguard-decision"] == "block"
    choice = reply.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.tool_calls is None and choice.message.content is None
    assert FLAGGED not in raw.http_response.text
    results = choice.model_extra["content_filter_results"]
    assert results["violence"] == {"filtered": True, "detected": True, "category": "VI1"}
    (record,) = audit_records(gw)
    flagged = [v for v in record["verdicts"] if v["label"] == "violation"]
    assert [(v["policy"], v["side"], v["tool"]) for v in flagged] == [
        ("violence", "output", "send_email")
    ]
    assert record["decision"] == "block"


def test_safe_tool_calls_pass_untouched(gw, scripted):
    tool_call = call("get_weather", '{"city": "Paris"}')
    scripted[0].answer = completion(
        {"content": None, "tool_calls": [tool_call]}, finish="tool_calls"
    )
    raw = ask(gw)
    choice = raw.parse().choices[0]
    assert raw.headers["x-safeguard-decision"] == "allow"
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.arguments == '{"city": "Paris"}'


def test_a_flagged_legacy_function_call_is_withheld(gw, scripted):
    scripted[0].answer = completion(
        {"content": None, "function_call": {"name": "shout", "arguments": FLAGGED}},
        finish="function_call",
    )
    raw = ask(gw)
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.function_call is None
    assert FLAGGED not in raw.http_response.text


def test_a_flagged_refusal_is_withheld(gw, scripted):
    scripted[0].answer = completion({"content": None, "refusal": f"I will not {FLAGGED}"})
    raw = ask(gw)
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.refusal is None


def test_every_choice_of_n_is_judged_on_its_own(gw, scripted):
    scripted[0].answer = completion(
        {"content": "a calm answer"},
        {"content": f"they said {FLAGGED}"},
        {"content": "buy now while stocks last"},
    )
    raw = ask(gw)
    choices = raw.parse().choices
    assert [c.finish_reason for c in choices] == ["stop", "content_filter", "stop"]
    assert choices[0].message.content == "a calm answer"
    assert choices[1].message.content is None
    detected = [
        {pid: r["detected"] for pid, r in c.model_extra["content_filter_results"].items()}
        for c in choices
    ]
    assert detected == [
        {"violence": False, "spam": False},
        {"violence": True, "spam": False},
        {"violence": False, "spam": True},
    ]
    assert raw.headers["x-safeguard-decision"] == "block"


def response(*items: dict) -> dict:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "m",
        "status": "completed",
        "output": list(items),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def test_a_flagged_responses_function_call_makes_the_response_incomplete(gw, scripted):
    scripted[0].answer = response(
        {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "calling it", "annotations": []}]},
        {"type": "function_call", "id": "fc1", "call_id": "c1", "name": "run",
         "arguments": f'{{"cmd": "{FLAGGED}"}}', "status": "completed"},
    )  # fmt: skip
    raw = sdk(gw).responses.with_raw_response.create(model="guarded-1", input="hi")
    reply = raw.parse()
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "content_filter"
    assert reply.output == []
    assert FLAGGED not in raw.http_response.text
    (record,) = audit_records(gw)
    assert [v["tool"] for v in record["verdicts"] if v["label"] == "violation"] == ["run"]


def test_a_safe_responses_function_call_passes(gw, scripted):
    item = {"type": "function_call", "id": "fc1", "call_id": "c1", "name": "run",
            "arguments": '{"cmd": "ls"}', "status": "completed"}  # fmt: skip
    scripted[0].answer = response(item)
    reply = sdk(gw).responses.create(model="guarded-1", input="hi")
    assert reply.status == "completed"
    assert reply.output[0].arguments == '{"cmd": "ls"}'
