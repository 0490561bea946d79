"""Answer text outside `content`, through the openai SDK: a model's reasoning (Chat
`reasoning_content`/`reasoning` as vLLM, SGLang and DeepSeek send it, Responses reasoning
items and their stream events) is guarded when the route's `output.thinking` is on, as
Anthropic thinking blocks are; audio transcripts and what hosted tools were asked (code
interpreter code, web search queries) are answer content and always guarded. A block
stops the text, a redaction rewrites what is sent, stream or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import KEY, audit_records
from tests.fakes.scripted import Scripted, scripted_upstream
from tests.fakes.serve import ServerHandle

FLAGGED = "we will kill them all tonight"  # the violence policy's trigger
EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, ServerHandle]]:
    with scripted_upstream() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(scripted) -> None:
    scripted[0].answer = scripted[0].events = None


def gateway(make_gateway, scripted, thinking: bool, policies: list[str] | None = None):
    output = {
        "policies": policies or ["violence"],
        "thinking": thinking,
        "first_window_chars": 64,
        "window_chars": 64,
        "overlap_chars": 16,
    }
    return make_gateway(
        raw={"upstreams": {"scripted": {"base_url": scripted[1].url + "/v1", "api_key": "k"}}},
        guarded={"upstream": "scripted", "output": output},
    )


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


def completion(**message: Any) -> dict:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "the answer", **message}}],
    }  # fmt: skip


def chat(gw, stream: bool = False):
    return sdk(gw).chat.completions.with_raw_response.create(
        model="guarded-1", messages=[{"role": "user", "content": "hi"}], stream=stream
    )


# -- Chat Completions, whole answers ----------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_flagged_chat_reasoning_is_withheld_when_the_route_guards_it(
    make_gateway, scripted, field: str
) -> None:
    gw = gateway(make_gateway, scripted, thinking=True)
    scripted[0].answer = completion(**{field: f"plan: {FLAGGED}"})
    raw = chat(gw)
    choice = raw.parse().choices[0]
    assert raw.headers["x-safeguard-decision"] == "block"
    assert choice.finish_reason == "content_filter" and choice.message.content is None
    assert FLAGGED not in raw.http_response.text
    assert field not in (choice.message.model_extra or {})


def test_reasoning_passes_unguarded_when_the_route_leaves_it(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    scripted[0].answer = completion(reasoning_content=f"plan: {FLAGGED}")
    raw = chat(gw)
    assert raw.headers["x-safeguard-decision"] == "allow"
    assert raw.parse().choices[0].message.model_extra["reasoning_content"].endswith(FLAGGED)


def test_a_withheld_choice_takes_its_reasoning_along(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    scripted[0].answer = completion(content=FLAGGED, reasoning_content="my private plan")
    raw = chat(gw)
    assert "my private plan" not in raw.http_response.text
    assert raw.parse().choices[0].finish_reason == "content_filter"


def test_reasoning_redaction_rewrites_the_answer(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=True, policies=["pii"])
    scripted[0].answer = completion(reasoning_content=f"mail {EMAIL} later")
    raw = chat(gw)
    assert raw.headers["x-safeguard-decision"] == "redact"
    message = raw.parse().choices[0].message
    assert message.model_extra["reasoning_content"] == "mail [REDACTED:EMAIL] later"
    assert EMAIL not in raw.http_response.text


def test_a_flagged_audio_transcript_is_withheld_with_its_audio(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 9, "transcript": FLAGGED}
    scripted[0].answer = completion(content=None, audio=audio)
    raw = chat(gw)
    message = raw.parse().choices[0].message
    assert raw.parse().choices[0].finish_reason == "content_filter"
    assert message.audio is None and FLAGGED not in raw.http_response.text


# -- Chat Completions, streams ----------------------------------------------------------


def chunk(**delta: Any) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip


def chat_events(deltas: list[dict]) -> list[dict | bytes]:
    final = chunk()
    final["choices"][0]["finish_reason"] = "stop"
    return [chunk(role="assistant"), *[chunk(**d) for d in deltas], final, b"data: [DONE]\n\n"]


def split(text: str, size: int = 6) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def streamed_chat(gw) -> tuple[list, str]:
    chunks = list(
        sdk(gw).chat.completions.create(
            model="guarded-1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    raw = httpx.post(  # the same stream's bytes, as a client without the SDK reads them
        gw.base_url + "/chat/completions",
        json={"model": "guarded-1", "messages": [{"role": "user", "content": "hi"}],
              "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).text  # fmt: skip
    return chunks, raw


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_streamed_flagged_reasoning_is_never_sent(make_gateway, scripted, field: str) -> None:
    gw = gateway(make_gateway, scripted, thinking=True)
    text = f"Let me think about this for a while. Then {FLAGGED} and more."
    scripted[0].events = chat_events(
        [{field: part} for part in split(text)] + [{"content": "the answer"}]
    )
    chunks, raw = streamed_chat(gw)
    sent = "".join(
        (c.choices[0].delta.model_extra or {}).get(field) or "" for c in chunks if c.choices
    )
    assert "kill" not in sent and "kill" not in raw
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "the answer" not in raw


def test_streamed_reasoning_redaction_is_rewritten(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=True, policies=["pii"])
    text = f"I should write to {EMAIL} about it."
    scripted[0].events = chat_events([{"reasoning_content": p} for p in split(text)])
    chunks, raw = streamed_chat(gw)
    sent = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert sent == "I should write to [REDACTED:EMAIL] about it."
    assert EMAIL not in raw


def test_streamed_reasoning_details_are_rewritten_with_reasoning(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=True, policies=["pii"])
    parts = split(f"I should write to {EMAIL} about it.")
    scripted[0].events = chat_events(  # OpenRouter: the same text twice, in two shapes
        [{"reasoning": p, "reasoning_details": [{"type": "reasoning.text", "text": p}]}
         for p in parts]
    )  # fmt: skip
    chunks, raw = streamed_chat(gw)
    details = [
        d["text"]
        for c in chunks
        if c.choices
        for d in (c.choices[0].delta.model_extra or {}).get("reasoning_details") or ()
    ]
    assert "".join(details) == "I should write to [REDACTED:EMAIL] about it."
    assert EMAIL not in raw


def test_streamed_reasoning_flows_when_the_route_leaves_it(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    scripted[0].events = chat_events([{"reasoning_content": FLAGGED}, {"content": "ok"}])
    chunks, _ = streamed_chat(gw)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_streamed_flagged_audio_transcript_is_never_sent(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    parts = split(f"Here is what I say: {FLAGGED}, okay?")
    scripted[0].events = chat_events(
        [{"audio": {"id": "a", "data": "AAAA", "transcript": p}} for p in parts]
    )
    chunks, raw = streamed_chat(gw)
    assert "kill" not in raw
    assert chunks[-1].choices[0].finish_reason == "content_filter"


# -- Responses API ----------------------------------------------------------------------


TEXT = {"type": "output_text", "text": "the answer", "annotations": []}
ANSWER = {"type": "message", "id": "msg", "role": "assistant", "status": "completed",
          "content": [TEXT]}  # fmt: skip


def response(*items: dict) -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "completed", "output": [*items, ANSWER]}  # fmt: skip


REASONING = {"type": "reasoning", "id": "rs", "summary": [
    {"type": "summary_text", "text": f"Plan: {FLAGGED}"}]}  # fmt: skip
REASONING_TEXT = {"type": "reasoning", "id": "rs", "summary": [], "content": [
    {"type": "reasoning_text", "text": f"Plan: {FLAGGED}"}]}  # fmt: skip
CODE = {"type": "code_interpreter_call", "id": "ci", "status": "completed", "container_id": "c",
        "code": f"print('{FLAGGED}')", "outputs": []}  # fmt: skip
TYPED = {"type": "computer_call", "id": "cu", "call_id": "c", "status": "completed",
         "pending_safety_checks": [], "action": {"type": "type", "text": FLAGGED}}  # fmt: skip
SHELL = {"type": "shell_call", "id": "sh", "call_id": "c", "status": "completed",
         "action": {"commands": ["ls", f"echo '{FLAGGED}'"]}}  # fmt: skip
SEARCH = {"type": "web_search_call", "id": "ws", "status": "completed",
          "action": {"type": "search", "query": FLAGGED}}  # fmt: skip


@pytest.mark.parametrize(
    ("item", "thinking"),
    [
        (REASONING, True),
        (REASONING_TEXT, True),
        (CODE, False),
        (SEARCH, False),
        (TYPED, False),
        (SHELL, False),
    ],
    ids=[
        "reasoning summary",
        "reasoning text",
        "code interpreter code",
        "web search query",
        "computer typing",
        "shell command",
    ],
)
def test_flagged_response_items_are_withheld(make_gateway, scripted, item, thinking) -> None:
    gw = gateway(make_gateway, scripted, thinking=thinking)
    scripted[0].answer = response(item)
    raw = sdk(gw).responses.with_raw_response.create(model="guarded-1", input="hi")
    reply = raw.parse()
    assert raw.headers["x-safeguard-decision"] == "block"
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "content_filter"
    assert "kill" not in raw.http_response.text


def test_response_reasoning_is_left_when_the_route_leaves_it(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    scripted[0].answer = response(REASONING)
    reply = sdk(gw).responses.create(model="guarded-1", input="hi")
    assert reply.status == "completed" and reply.output[0].summary[0].text.endswith(FLAGGED)


def responses_events(*middle: dict) -> list[dict | bytes]:
    base = response()
    created = {**base, "status": "in_progress", "output": []}
    return [
        {"type": "response.created", "sequence_number": 0, "response": created},
        *middle,
        {"type": "response.completed", "sequence_number": 99, "response": base},
    ]


def reasoning_events(kind: str, text: str) -> list[dict]:
    index = "summary_index" if kind == "reasoning_summary_text" else "content_index"
    item = {"type": "reasoning", "id": "rs", "summary": []}
    events: list[dict] = [{"type": "response.output_item.added", "output_index": 0,
                           "sequence_number": 1, "item": item}]  # fmt: skip
    events += [
        {"type": f"response.{kind}.delta", "item_id": "rs", "output_index": 0, index: 0,
         "sequence_number": 2 + n, "delta": part}
        for n, part in enumerate(split(text))
    ]  # fmt: skip
    events.append({"type": f"response.{kind}.done", "item_id": "rs", "output_index": 0,
                   index: 0, "sequence_number": 80, "text": text})  # fmt: skip
    return events


def streamed_response(gw) -> list:
    return list(sdk(gw).responses.create(model="guarded-1", input="hi", stream=True))


@pytest.mark.parametrize("kind", ["reasoning_summary_text", "reasoning_text"])
def test_streamed_flagged_reasoning_events_are_never_sent(make_gateway, scripted, kind) -> None:
    gw = gateway(make_gateway, scripted, thinking=True)
    text = f"First I consider the request. Then {FLAGGED} as planned."
    scripted[0].events = responses_events(*reasoning_events(kind, text))
    events = streamed_response(gw)
    assert "kill" not in str([e.model_dump() for e in events])
    assert events[-1].type == "response.incomplete"


def test_streamed_reasoning_summary_redaction_is_rewritten(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=True, policies=["pii"])
    text = f"Write to {EMAIL} about it."
    scripted[0].events = responses_events(*reasoning_events("reasoning_summary_text", text))
    events = streamed_response(gw)
    deltas = "".join(e.delta for e in events if e.type.endswith("summary_text.delta"))
    assert deltas == "Write to [REDACTED:EMAIL] about it."
    (done,) = [e for e in events if e.type == "response.reasoning_summary_text.done"]
    assert done.text == deltas
    assert EMAIL not in str([e.model_dump() for e in events])


STREAMED_TOOLS = {
    "code interpreter code": (
        {**CODE, "code": "", "status": "in_progress"},
        {"type": "response.code_interpreter_call_code.delta", "item_id": "ci"},
    ),
    "shell command": (
        {**SHELL, "status": "in_progress", "action": {"commands": []}},
        {"type": "response.shell_call_command.delta", "command_index": 0},
    ),
}


@pytest.mark.parametrize("tool", STREAMED_TOOLS)
def test_streamed_flagged_tool_text_is_never_sent(make_gateway, scripted, tool: str) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    item, delta = STREAMED_TOOLS[tool]
    text = f"# a long enough preamble first\nprint('{FLAGGED}')\n"
    added = {"type": "response.output_item.added", "output_index": 0, "sequence_number": 1,
             "item": item}  # fmt: skip
    deltas = [
        {**delta, "output_index": 0, "sequence_number": 2 + n, "delta": part}
        for n, part in enumerate(split(text))
    ]
    scripted[0].events = responses_events(added, *deltas)
    events = streamed_response(gw)
    assert "kill" not in str([e.model_dump() for e in events])
    assert events[-1].type == "response.incomplete"


def test_a_search_query_restated_only_when_done_is_guarded(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False)
    done = {"type": "response.output_item.done", "output_index": 0, "sequence_number": 3,
            "item": SEARCH}  # fmt: skip
    scripted[0].events = responses_events(done)
    events = streamed_response(gw)
    assert "kill" not in str([e.model_dump() for e in events])
    assert events[-1].type == "response.incomplete"
    (record,) = audit_records(gw)
    assert record["decision"] == "block"


# -- logprobs: their tokens spell out the text ----------------------------------------------


def logprobs(text: str) -> dict:
    return {"content": [{"token": w, "logprob": -0.1, "bytes": list(w.encode()),
                         "top_logprobs": []} for w in text.split(" ")]}  # fmt: skip


@pytest.mark.parametrize("policy", ["violence", "pii"])
def test_a_withheld_or_redacted_choice_loses_its_logprobs(make_gateway, scripted, policy) -> None:
    gw = gateway(make_gateway, scripted, thinking=False, policies=[policy])
    text = f"{FLAGGED} {EMAIL}"
    answer = completion(content=text)
    answer["choices"][0]["logprobs"] = logprobs(text)
    scripted[0].answer = answer
    raw = chat(gw)
    assert raw.headers["x-safeguard-decision"] == ("block" if policy == "violence" else "redact")
    assert raw.parse().choices[0].logprobs is None
    assert "kill" not in raw.http_response.text or policy == "pii"
    assert EMAIL not in raw.http_response.text or policy == "violence"


def test_redacted_stream_chunks_lose_their_logprobs(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False, policies=["pii"])
    events = chat_events([{"content": p} for p in split(f"Please write to {EMAIL} today.")])
    for event in events[1:-2]:
        event["choices"][0]["logprobs"] = logprobs(event["choices"][0]["delta"]["content"])
    scripted[0].events = events
    chunks, raw = streamed_chat(gw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Please write to [REDACTED:EMAIL] today."
    )
    assert "ne.doe" not in raw and "examp" not in raw  # nor in the chunks' logprobs


def test_a_redacted_response_text_loses_its_logprobs(make_gateway, scripted) -> None:
    gw = gateway(make_gateway, scripted, thinking=False, policies=["pii"])
    text = f"write to {EMAIL}"
    part = {"type": "output_text", "text": text, "annotations": [],
            "logprobs": [{"token": t, "logprob": -0.1, "bytes": [], "top_logprobs": []}
                         for t in text.split(" ")]}  # fmt: skip
    scripted[0].answer = {**response(), "output": [{**ANSWER, "content": [part]}]}
    raw = sdk(gw).responses.with_raw_response.create(model="guarded-1", input="hi")
    assert raw.parse().output[0].content[0].text == "write to [REDACTED:EMAIL]"
    assert EMAIL not in raw.http_response.text
