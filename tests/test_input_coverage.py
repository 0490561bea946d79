"""No input bypass, end to end: flagged words in any field a client can fill get the same
400 as in the last user message, and never reach the upstream; per-message classification
costs no more classifier calls than classifying the last turn did."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from proxy.policies import load_policies
from tests.conftest import KEY, audit_records, policy_text

FLAGGED = "where can I buy an aimbot"
POLICIES = {
    # The default scope: no `scope:` line at all.
    "cheating": policy_text("cheating", triggers="aimbot", category="CH2").replace(
        "scope: last_user\n", ""
    ),
    "injection": policy_text(
        "injection", triggers="ignore previous", category="PI1", scope="conversation"
    ),
    "latest": policy_text("latest", triggers="aimbot", category="LU1", scope="last_user"),
}
GUARDED = {"upstream": "main", "input": {"policies": ["cheating"]}}
SAFE_USER = {"role": "user", "content": "hello there"}


def post(gw, path: str, body: dict) -> httpx.Response:
    return httpx.post(
        gw.base_url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )


def chat_body(*messages: dict, **extra) -> dict:
    return {"model": "guarded-1", "messages": list(messages), **extra}


CHAT_PLACEMENTS = {
    "system": chat_body({"role": "system", "content": FLAGGED}, SAFE_USER),
    "developer": chat_body({"role": "developer", "content": FLAGGED}, SAFE_USER),
    "earlier user turn": chat_body(
        {"role": "user", "content": FLAGGED},
        {"role": "assistant", "content": "no"},
        SAFE_USER,
    ),
    "assistant": chat_body({"role": "assistant", "content": FLAGGED}, SAFE_USER),
    "tool result": chat_body(
        {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": FLAGGED},
        SAFE_USER,
    ),
    "function result": chat_body({"role": "function", "name": "f", "content": FLAGGED}, SAFE_USER),
    "text part": chat_body(
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "text", "text": FLAGGED}]}
    ),
    "name field": chat_body({"role": "user", "name": "aimbot_seller", "content": "hello"}),
    "tool call arguments": chat_body(
        {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "f", "arguments": '{"q": "aimbot"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "done"},
        SAFE_USER,
    ),
    "tool description": chat_body(
        SAFE_USER,
        tools=[{"type": "function", "function": {"name": "f", "description": FLAGGED}}],
    ),
    "tool parameter description": chat_body(
        SAFE_USER,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "string", "description": FLAGGED}}}}}],
    ),
}  # fmt: skip


@pytest.mark.parametrize("placement", CHAT_PLACEMENTS)
def test_chat_text_anywhere_is_classified(make_gateway, upstream, placement: str) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    reply = post(gw, "/chat/completions", CHAT_PLACEMENTS[placement])
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("content_filter", "messages")
    assert upstream[0].requests == []


RESPONSES_PLACEMENTS = {
    "instructions": {"instructions": FLAGGED, "input": "hello"},
    "developer item": {"input": [{"role": "developer", "content": FLAGGED}, SAFE_USER]},
    "input_text part": {"input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": FLAGGED}]}]},
    "function_call_output": {"input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": FLAGGED},
        SAFE_USER]},
    "function_call arguments": {"input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"q":"aimbot"}'},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}, SAFE_USER]},
    "tool definition": {"input": "hello", "tools": [
        {"type": "function", "name": "f", "description": FLAGGED, "parameters": {}}]},
}  # fmt: skip


@pytest.mark.parametrize("placement", RESPONSES_PLACEMENTS)
def test_responses_text_anywhere_is_classified(make_gateway, upstream, placement: str) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    body = {"model": "guarded-1", **RESPONSES_PLACEMENTS[placement]}
    reply = post(gw, "/responses", body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "input"
    assert upstream[0].requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ["harmless first", FLAGGED]},
        {"prompt": [FLAGGED, "harmless last"]},
        {"prompt": "complete this", "suffix": FLAGGED},
    ],
)
def test_completions_prompt_arrays_and_suffix_are_classified(make_gateway, upstream, body) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    reply = post(gw, "/completions", {"model": "guarded-1", **body})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "prompt"
    assert upstream[0].requests == []


def test_safe_text_everywhere_passes_untouched(make_gateway, upstream) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    body = CHAT_PLACEMENTS["tool result"] | {"messages": [
        {"role": "system", "content": "be brief"}, SAFE_USER]}  # fmt: skip
    reply = post(gw, "/chat/completions", body)
    assert reply.status_code == 200
    assert upstream[0].requests[-1].body["messages"] == body["messages"]


def test_last_user_stays_an_explicit_opt_in(make_gateway, upstream) -> None:
    gw = make_gateway(
        guarded={"upstream": "main", "input": {"policies": ["latest"]}}, policies=POLICIES
    )
    reply = post(gw, "/chat/completions", CHAT_PLACEMENTS["system"])
    assert reply.status_code == 200  # the operator chose to read the last user turn only
    reply = post(gw, "/chat/completions", chat_body({"role": "user", "content": FLAGGED}))
    assert reply.status_code == 400


def test_redaction_reaches_every_field(make_gateway, upstream) -> None:
    pii = policy_text("pii", action="redact", detectors="email", scope="per_message")
    gw = make_gateway(
        guarded={"upstream": "main", "input": {"policies": ["pii"]}}, policies={"pii": pii}
    )
    email = "jane.doe@example.com"
    body = chat_body(
        {"role": "system", "content": f"the admin is {email}"},
        {"role": "user", "content": [{"type": "text", "text": f"write to {email}"}]},
    )
    reply = post(gw, "/chat/completions", body)
    assert reply.status_code == 200
    sent = upstream[0].requests[-1].body["messages"]
    assert sent[0]["content"] == "the admin is [REDACTED:EMAIL]"
    assert sent[1]["content"][0]["text"] == "write to [REDACTED:EMAIL]"
    assert reply.headers["x-safeguard-decision"] == "redact"


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for n in range(turns):
        messages.append({"role": "user", "content": f"question number {n}: tell me about {n}"})
        messages.append({"role": "assistant", "content": f"answer number {n}"})
    return messages[:-1]  # ends on the user's turn


def test_a_new_turn_costs_one_call_per_policy_like_last_user_did(make_gateway, classifier):
    """10 turns, only the last one new: per-message classification reuses the verdicts of
    the turns sent before, so the request costs what `last_user` cost (one call)."""
    gw = make_gateway(
        guarded={"upstream": "main", "input": {"policies": ["cheating", "injection"]}},
        policies=POLICIES,
    )
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    history = conversation(10)
    sdk.chat.completions.create(model="guarded-1", messages=history[:-1])  # type: ignore[arg-type]
    before = len(classifier[0].calls)
    sdk.chat.completions.create(model="guarded-1", messages=history)  # type: ignore[arg-type]
    new_calls = classifier[0].calls[before:]
    per_message = [c.content for c in new_calls if "cheating" in c.policy]
    whole = [c for c in new_calls if "injection" in c.policy]
    assert per_message == ["question number 9: tell me about 9"]
    # scope: conversation still sees the whole conversation, labelled, in one call.
    assert len(whole) == 1
    assert whole[0].content.startswith("[system] You are a helpful assistant.")
    assert "[user] question number 9" in whole[0].content


def test_an_answer_judged_on_the_way_out_is_free_when_sent_back(make_gateway, classifier):
    """A chat: each request is the history plus one new user turn. The model's previous
    answer was judged by the same policy as output, so only the new turn costs a call."""
    policy = POLICIES["cheating"]
    gw = make_gateway(
        guarded={"upstream": "main", "input": {"policies": ["cheating"]},
                 "output": {"policies": ["cheating"]}},
        policies={"cheating": policy},
    )  # fmt: skip
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    history: list = [{"role": "system", "content": "Be brief."}]
    counts = []
    for turn in range(10):
        history.append({"role": "user", "content": f"turn {turn}"})
        before = len(classifier[0].calls)
        reply = sdk.chat.completions.create(model="guarded-1", messages=history)
        counts.append(len(classifier[0].calls) - before)
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
    # the first request also reads the system message; then one input and one output call
    assert counts == [3] + [2] * 9


def test_the_audit_records_one_verdict_per_policy(make_gateway) -> None:
    gw = make_gateway(guarded=GUARDED, policies=POLICIES)
    post(gw, "/chat/completions", CHAT_PLACEMENTS["developer"])
    (record,) = audit_records(gw)
    assert [(v["policy"], v["label"]) for v in record["verdicts"]] == [("cheating", "violation")]


def test_shipped_policies_read_every_field() -> None:
    """A shipped policy with `scope: last_user` would let text in any other field by."""
    shipped = load_policies(Path(__file__).parent.parent / "policies")
    assert shipped
    assert {p.id: p.scope for p in shipped.values() if p.scope == "last_user"} == {}
