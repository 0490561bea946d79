"""proxy/sse.py: event framing, text deltas per API, rewrites, usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.anthropic_api import MESSAGES
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES
from proxy.sse import (
    EventReader,
    EventSplitter,
    parse_event,
    usage_of,
    with_final_text,
    with_texts,
)


def data(payload: dict[str, Any], name: str | None = None, eol: bytes = b"\n") -> bytes:
    head = b"event: " + name.encode() + eol if name else b""
    return head + b"data: " + orjson.dumps(payload) + eol + eol


def chat_chunk(content: str | None = None, index: int = 0, **choice: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": index, "delta": delta, "finish_reason": None} | choice],
    }


def delta_event(text: str, output_index: int = 0) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": output_index,
        "content_index": 0,
        "delta": text,
    }


# --- framing -----------------------------------------------------------------------------


def stream(eol: bytes) -> list[bytes]:
    return [
        data(chat_chunk("Hel"), eol=eol),
        eol.join([b": keep-alive", b""]) + eol,
        data(chat_chunk("lo\n\nworld"), eol=eol),  # a blank line *inside* JSON is escaped
        data(delta_event("x"), "response.output_text.delta", eol=eol),
        b"data: [DONE]" + eol + eol,
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_every_chunk_boundary_yields_the_same_events(eol: bytes) -> None:
    events = stream(eol)
    whole = b"".join(events)
    for cut in range(len(whole) + 1):
        splitter = EventSplitter()
        got = splitter.feed(whole[:cut]) + splitter.feed(whole[cut:])
        assert got == events, f"split at byte {cut}"
        assert splitter.rest() == b""


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_byte_by_byte_feeding_yields_the_same_events(eol: bytes) -> None:
    events = stream(eol)
    splitter = EventSplitter()
    got = [e for byte in b"".join(events) for e in splitter.feed(bytes([byte]))]
    assert got == events


def test_rest_returns_an_unterminated_tail_once() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2\n") == [b"data: 1\n\n"]
    assert splitter.rest() == b"data: 2\n"
    assert splitter.rest() == b""


# --- parse_event -------------------------------------------------------------------------


def test_chat_delta_text() -> None:
    event = parse_event(data(chat_chunk("Hello")), CHAT)
    assert event.texts == {0: "Hello"}
    assert event.data is not None and event.data["id"] == "chatcmpl-1"
    assert not event.done


def test_chat_chunks_without_text_carry_none() -> None:
    role = chat_chunk(role="assistant")
    role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
    assert parse_event(data(role), CHAT).texts == {}
    assert parse_event(data(chat_chunk(finish_reason="stop")), CHAT).texts == {}
    assert parse_event(data({"choices": [], "usage": {"total_tokens": 3}}), CHAT).texts == {}


def test_chat_multiple_choices() -> None:
    chunk = chat_chunk("a")
    chunk["choices"].append({"index": 1, "delta": {"content": "b"}})
    assert parse_event(data(chunk), CHAT).texts == {0: "a", 1: "b"}


def test_completions_text() -> None:
    chunk = {"object": "text_completion", "choices": [{"index": 2, "text": "xyz"}]}
    assert parse_event(data(chunk), COMPLETIONS).texts == {2: "xyz"}


def test_responses_named_events() -> None:
    event = parse_event(data(delta_event("hi", 1), "response.output_text.delta"), RESPONSES)
    assert event.name == "response.output_text.delta"
    assert event.type == "response.output_text.delta"
    assert event.texts == {1: "hi"}
    done = {"type": "response.output_text.done", "output_index": 1, "text": "hi there"}
    assert parse_event(data(done, "response.output_text.done"), RESPONSES).texts == {}


def test_done_marker() -> None:
    for raw in (b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n"):
        event = parse_event(raw, CHAT)
        assert event.done
        assert event.data is None
        assert event.texts == {}


def test_comments_and_non_json_are_kept_raw_without_data() -> None:
    for raw in (b": ping\n\n", b"data: not json\n\n", b"event: x\n\n"):
        event = parse_event(raw, CHAT)
        assert event.raw == raw
        assert event.data is None
        assert not event.done


def test_multi_line_data_is_joined() -> None:
    raw = b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "ok"}}]}\n\n'
    assert parse_event(raw, CHAT).texts == {0: "ok"}


# --- EventReader: a stream's bulk read by its shape ---------------------------------------

TEXTS = [  # what a model may write: escapes, line breaks, quotes, non-ASCII, nothing
    "Hello",
    " world",
    "",
    'say "hi"',
    "back\\slash",
    "two\nlines",
    "tab\there",
    "\u00e9t\u00e9",
    "\U0001f600 emoji",
    "\x01 control",
    "</script>",
    "\u2028 sep",
    "chatcmpl-1",
    "content",
]


def same(got: Any, want: Any) -> None:
    """The reader's event is what parse_event reads from the same bytes."""
    assert got.raw == want.raw
    assert (got.name, got.texts, got.data) == (want.name, want.texts, want.data)
    flags = ("done", "terminal", "finishing", "garbled", "finals", "names")
    assert [getattr(got, f) for f in flags] == [getattr(want, f) for f in flags]


def streams() -> list[tuple[str, list[bytes]]]:
    chat = [data(chat_chunk(t)) for t in TEXTS]
    chat.insert(3, data(chat_chunk("x", finish_reason="stop")))
    chat.insert(5, data(chat_chunk("other choice", index=1)))
    chat.insert(7, data(chat_chunk(None) | {"usage": {"total_tokens": 3}}))
    sglang = {"role": None, "reasoning_content": None, "tool_calls": None}  # nulls beside it
    chat += [data(chat_chunk(None, delta={"content": t} | sglang)) for t in TEXTS[:4]]
    call = {"index": 0, "function": {"arguments": ""}}
    chat += [
        data(chat_chunk(None, delta={"tool_calls": [call | {"function": {"arguments": t}}]}))
        for t in ('{"path":', ' "/tmp"}', "")
    ]
    completions = [data({"id": "c", "choices": [{"index": 0, "text": t}]}) for t in TEXTS]
    responses = [  # each event numbered, as OpenAI numbers them
        data({"type": "response.output_text.delta", "sequence_number": n} | delta_event(t),
             "response.output_text.delta")
        for n, t in enumerate(TEXTS, start=8)
    ]  # fmt: skip
    responses.insert(2, responses[2].replace(b'"sequence_number":10', b'"sequence_number":010'))
    messages = [
        data({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
              "text": t}}, "content_block_delta")
        for t in TEXTS
    ]  # fmt: skip
    return [(CHAT, chat), (COMPLETIONS, completions), (RESPONSES, responses), (MESSAGES, messages)]


@pytest.mark.parametrize(("endpoint", "events"), streams(), ids=lambda v: str(v)[:12])
def test_reader_reads_every_event_as_parse_event_does(endpoint: str, events: list[bytes]) -> None:
    whole = b"".join(events)
    for reads in ([whole], [bytes([b]) for b in whole], events):
        reader = EventReader(endpoint)
        got = [e for chunk in reads for e in reader.feed(chunk)]
        assert len(got) == len(events)
        for event, raw in zip(got, events, strict=True):
            same(event, parse_event(raw, endpoint))
    shaped = [not isinstance(e._data, dict) for e in EventReader(endpoint).feed(whole)]
    assert shaped.count(True) >= len(TEXTS) - 1  # all but the first, escapes included


def test_reader_reads_runtimes_deltas_and_tool_arguments_by_their_shape() -> None:
    nulls = {"role": None, "reasoning_content": None, "tool_calls": None}  # as SGLang sends
    texts = [data(chat_chunk(None, delta={"content": t} | nulls)) for t in ("a", "b", "c")]
    call = {"index": 0, "function": {"arguments": ""}}
    calls = [
        data(chat_chunk(None, delta={"tool_calls": [call | {"function": {"arguments": t}}]}))
        for t in ('{"path":', ' "/tmp', '/x"}')
    ]
    got = EventReader(CHAT).feed(b"".join(texts + calls))
    assert [e.texts for e in got] == [{0: "a"}, {0: "b"}, {0: "c"}] + [
        {(0, "tool", 0): t} for t in ('{"path":', ' "/tmp', '/x"}')
    ]
    assert [isinstance(e._data, dict) for e in got] == [True, False, False] * 2  # shape-read
    escaped = [  # a lone surrogate, a bad escape: the JSON is not valid, the event garbled
        data(chat_chunk(None, delta={"content": "x"} | nulls)).replace(b'"x"', bad)
        for bad in (b'"\\ud800"', b'"\\q"', b'"\\u12"')
    ]
    for event, raw in zip(
        EventReader(CHAT).feed(texts[0] + b"".join(escaped)), [texts[0], *escaped], strict=True
    ):
        same(event, parse_event(raw, CHAT))
        assert event.garbled == (raw != texts[0])


def test_reader_reads_a_stream_that_is_not_utf8_or_not_json_as_garbled() -> None:
    good = data(chat_chunk("fine"))
    bad = [good.replace(b"fine", b"\xff\xfe"), good.replace(b"fine", b'a"b'), b"data: {\n\n"]
    reader = EventReader(CHAT)
    got = reader.feed(good + good + b"".join(bad))
    for event, raw in zip(got, [good, good, *bad], strict=True):
        same(event, parse_event(raw, CHAT))
    assert [e.garbled for e in got] == [False, False, True, True, True]


def test_a_text_written_like_another_member_is_not_taken_for_the_stream_shape() -> None:
    # The delta's text is "id", escaped: its JSON ("id") appears only as the key `id`. A
    # shape taken from there would read the next event's id member as its text.
    first = b'data: {"id":"a","choices":[{"index":0,"delta":{"content":"\\u0069d"}}]}\n\n'
    second = b'data: {"zz":"a","choices":[{"index":0,"delta":{"content":"\\u0069d"}}]}\n\n'
    third = b'data: {"id":"a","choices":[{"index":0,"delta":{"content":"real"}}]}\n\n'
    reader = EventReader(CHAT)
    got = reader.feed(first + second + third)
    assert [e.texts for e in got] == [{0: "id"}, {0: "id"}, {0: "real"}]


def test_a_shape_read_event_parses_its_data_only_when_asked() -> None:
    reader = EventReader(CHAT)
    first, second = reader.feed(data(chat_chunk("one")) + data(chat_chunk("two")))
    assert second.plain and second._data is not None and not isinstance(second._data, dict)
    assert second.data == chat_chunk("two")
    assert first.data == chat_chunk("one")


# --- rewrites ----------------------------------------------------------------------------


def test_with_texts_rewrites_chat_deltas_and_leaves_the_original() -> None:
    chunk = chat_chunk("call 555-0100")
    chunk["choices"].append({"index": 1, "delta": {"content": "untouched"}})
    event = parse_event(data(chunk), CHAT)
    out = with_texts(event, CHAT, {0: "call [REDACTED:PHONE]"})
    again = parse_event(out, CHAT)
    assert again.texts == {0: "call [REDACTED:PHONE]", 1: "untouched"}
    assert again.data is not None and again.data["id"] == "chatcmpl-1"
    assert event.texts == {0: "call 555-0100", 1: "untouched"}
    assert event.data is not None
    assert event.data["choices"][0]["delta"]["content"] == "call 555-0100"


def test_with_texts_completions() -> None:
    event = parse_event(data({"choices": [{"index": 0, "text": "secret"}]}), COMPLETIONS)
    assert parse_event(with_texts(event, COMPLETIONS, {0: "[X]"}), COMPLETIONS).texts == {0: "[X]"}


def test_with_texts_responses_keeps_the_event_name() -> None:
    event = parse_event(data(delta_event("secret", 2), "response.output_text.delta"), RESPONSES)
    out = with_texts(event, RESPONSES, {2: ""})
    assert out.startswith(b"event: response.output_text.delta\ndata: ")
    again = parse_event(out, RESPONSES)
    assert again.data is not None and again.data["delta"] == ""
    assert again.data["item_id"] == "msg_1"


def message_item(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


@pytest.mark.parametrize(
    ("payload", "pick"),
    [
        (
            {"type": "response.output_text.done", "output_index": 1, "text": "a@b.co"},
            lambda d: d["text"],
        ),
        (
            {
                "type": "response.content_part.done",
                "output_index": 1,
                "part": {"type": "output_text", "text": "a@b.co"},
            },
            lambda d: d["part"]["text"],
        ),
        (
            {
                "type": "response.output_item.done",
                "output_index": 1,
                "item": message_item("a@b.co"),
            },
            lambda d: d["item"]["content"][0]["text"],
        ),
        (
            {
                "type": "response.completed",
                "response": {
                    "status": "completed",
                    "output": [{"type": "reasoning", "summary": []}, message_item("a@b.co")],
                },
            },
            lambda d: d["response"]["output"][1]["content"][0]["text"],
        ),
    ],
)
def test_with_final_text_restates_the_released_text(payload: dict, pick: Any) -> None:
    event = parse_event(data(payload, payload["type"]), RESPONSES)
    out = with_final_text(event, {1: "[REDACTED:EMAIL]"})
    assert out.startswith(f"event: {payload['type']}\n".encode())
    again = parse_event(out, RESPONSES)
    assert again.data is not None
    assert pick(again.data) == "[REDACTED:EMAIL]"
    assert b"a@b.co" not in out
    assert pick(event.data) == "a@b.co"  # the original event is not mutated


def test_with_final_text_leaves_other_outputs_alone() -> None:
    done = {"type": "response.output_text.done", "output_index": 0, "text": "keep me"}
    out = with_final_text(parse_event(data(done, done["type"]), RESPONSES), {1: "other"})
    assert orjson.loads(out.split(b"data: ", 1)[1])["text"] == "keep me"


# --- usage -------------------------------------------------------------------------------


def test_usage_of_chat_usage_chunk() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert usage_of(parse_event(data({"choices": [], "usage": usage}), CHAT)) == usage
    assert usage_of(parse_event(data(chat_chunk("x") | {"usage": None}), CHAT)) is None


def test_usage_of_response_completed() -> None:
    usage = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    payload = {"type": "response.completed", "response": {"status": "completed", "usage": usage}}
    assert usage_of(parse_event(data(payload, "response.completed"), RESPONSES)) == usage


def test_usage_of_events_without_data() -> None:
    assert usage_of(parse_event(b"data: [DONE]\n\n", CHAT)) is None
    assert usage_of(parse_event(b": ping\n\n", CHAT)) is None


def test_splitter_cuts_the_same_events_whatever_the_reads() -> None:
    stream = (
        b"data: a\n\n" + b"data: " + b"x" * 5000 + b"\n\n"
        b"event: e\r\ndata: b\r\n\r\n" + b"data: c\r\r" + b"data: d\n\n"
    )
    whole = EventSplitter()
    expected = [*whole.feed(stream), whole.rest()]
    for size in (1, 2, 3, 4, 7, 64, 4096):
        splitter, got = EventSplitter(), []
        for at in range(0, len(stream), size):
            got += splitter.feed(stream[at : at + size])
        assert [*got, splitter.rest()] == expected, size


def test_a_long_event_is_held_until_it_ends_and_counted() -> None:
    reader = EventReader(CHAT)
    head = b'data: {"choices":[{"index":0,"delta":{"content":"'
    assert reader.feed(head) == [] and reader.held == len(head)
    for _ in range(100):
        assert reader.feed(b"y" * 1000) == []
    assert reader.held == len(head) + 100_000
    (event,) = reader.feed(b'"}}]}\n\n')
    assert event.texts == {0: "y" * 100_000} and reader.held == 0
