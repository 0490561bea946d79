"""What the guard reads from an SSE stream vs what a client SDK reads from the same bytes.

A client here is a WHATWG-style SSE parser (lines end at CRLF, LF or CR; a blank line
dispatches; `data:` loses one leading space; data lines join with LF; a stream's leading
BOM is dropped) followed by a JSON parse (which skips leading whitespace), or a lenient one
that splits lines like str.splitlines(). Every text such a client shows must have been
classified: payloads led by whitespace, a leading BOM and line breaks hidden in `event:`
lines or comments once carried text past the guard. The rest are differential checks of
EventReader's shape reader against a full parse, and of the relay's end-marker watch.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest

from proxy.anthropic_api import MESSAGES
from proxy.guard.stream_machine import Classify, End, Release, StreamMachine
from proxy.guard.window import Window
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES
from proxy.sse import EventReader, parse_event

# --- a client's view ------------------------------------------------------------------------


def client_events(stream: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per dispatched event, per the WHATWG EventSource parsing rules."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    out, name, data = [], None, None
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data is not None:
                out.append((name, "\n".join(data)))
            name, data = None, None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data = (data or []) + [value]
        elif field == "event":
            name = value
    return out


def client_texts(stream: bytes, endpoint: str = CHAT) -> list[str]:
    """Every piece of text a client SDK would show (content, tool args, refusals, deltas)."""
    texts: list[str] = []
    for _name, data in client_events(stream):
        if data.startswith("[DONE]"):
            break
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if endpoint == RESPONSES:
            if isinstance(obj.get("delta"), str) and obj["delta"]:
                texts.append(obj["delta"])
            continue
        if endpoint == MESSAGES:
            d = obj.get("delta") or {}
            for k in ("text", "partial_json", "thinking"):
                if isinstance(d.get(k), str) and d[k]:
                    texts.append(d[k])
            continue
        for ch in obj.get("choices") or ():
            if endpoint == COMPLETIONS:
                if ch.get("text"):
                    texts.append(ch["text"])
                continue
            d = ch.get("delta") or {}
            for k in ("content", "refusal", "reasoning_content"):
                if isinstance(d.get(k), str) and d[k]:
                    texts.append(d[k])
            for tc in d.get("tool_calls") or ():
                a = (tc.get("function") or {}).get("arguments")
                if a:
                    texts.append(a)
    return texts


# --- the gateway's view -----------------------------------------------------------------------


class Guarded:
    """A stream machine fed by an EventReader, every classification answered `ok`."""

    def __init__(self, endpoint: str = CHAT) -> None:
        self.machine = StreamMachine(endpoint, Window(400, 0, 0, ()), mode="window", wait_s=1.0)
        self.reader = EventReader(endpoint)
        self.actions: list[Any] = []
        self.classified: list[str] = []

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self._run(self.machine.events(self.reader.feed(chunk), 0.0))

    def end(self) -> None:
        self._run(self.machine.upstream_end())

    def _run(self, actions: list[Any]) -> None:
        from proxy.guard.engine import Outcome  # noqa: F401 (as tests/test_stream_machine)
        from proxy.guard.stream_machine import Judged

        while actions:
            a = actions.pop(0)
            self.actions.append(a)
            if isinstance(a, Classify):
                self.classified += list(a.texts.values())
                actions += self.machine.verdict(a.seq, Judged((), dict(a.texts)))

    @property
    def sent(self) -> bytes:
        return b"".join(a.data for a in self.actions if isinstance(a, (Release, End)))


def unclassified(endpoint: str, *chunks: bytes) -> list[str]:
    """Text the client sees that no classification covered."""
    g = Guarded(endpoint)
    g.feed(*chunks)
    g.end()
    seen = "".join(g.classified)
    return [t for t in client_texts(g.sent, endpoint) if t not in seen]


def chat(text: str, i: int = 0) -> bytes:
    data = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


ROLE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices'
    b'":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason'
    b'":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
EVIL = (
    b'{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"i'
    b'ndex":0,"delta":{"content":"EVIL-UNCLASSIFIED"},"finish_reason":null}]'
    b"}"
)


# --- finding 1: a payload that starts with JSON whitespace ------------------------------------

WHITESPACE = {
    "two spaces": b"data:  " + EVIL + b"\n\n",
    "tab": b"data:\t" + EVIL + b"\n\n",
    "empty first data line": b"data:\ndata: " + EVIL + b"\n\n",
    "space-only first data line": b"data: \ndata: " + EVIL + b"\n\n",
    "CR line then data (CRLF stream)": b"data: \r\ndata: " + EVIL + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(WHITESPACE))
def test_a_payload_led_by_whitespace_is_classified_chat(name: str) -> None:
    attack = WHITESPACE[name]
    assert json.loads(client_events(attack)[0][1])["choices"][0]["delta"]["content"]  # SDK reads it
    leaked = unclassified(CHAT, ROLE, chat("Hello "), chat("world"), attack, DONE)
    assert leaked == [], f"{name}: reaches the client unclassified: {leaked}"


def test_a_payload_led_by_whitespace_is_classified_after_shape_learned() -> None:
    # same, in the middle of a stream whose shape the EventReader has learned
    learned = [chat(w) for w in ("a ", "b ", "c ")]
    attack = b"data:  " + chat("EVIL-UNCLASSIFIED")[6:]
    assert unclassified(CHAT, ROLE, *learned, attack, *learned, DONE) == []


def ev(kind: str, data: dict[str, Any], pre: bytes = b"data: ") -> bytes:
    """A named event (Responses, Messages) whose data line starts with `pre`."""
    return b"event: " + kind.encode() + b"\n" + pre + orjson.dumps({"type": kind, **data}) + b"\n\n"


def test_a_payload_led_by_whitespace_is_classified_responses() -> None:
    d = {"item_id": "m1", "output_index": 0, "content_index": 0}
    stream = [
        ev(
            "response.created",
            {"response": {"id": "r", "status": "in_progress"}, "sequence_number": 0},
        ),
        ev("response.output_text.delta", {**d, "delta": "Hi ", "sequence_number": 1}),
        ev(
            "response.output_text.delta",
            {**d, "delta": "EVIL-UNCLASSIFIED", "sequence_number": 2},
            b"data:  ",
        ),
        ev(
            "response.completed",
            {"response": {"id": "r", "status": "completed", "output": []}, "sequence_number": 3},
        ),
    ]
    assert unclassified(RESPONSES, *stream) == []


def test_a_payload_led_by_whitespace_is_classified_messages() -> None:
    stream = [
        ev(
            "message_start",
            {
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "c",
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                }
            },
        ),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi "}}),
        ev(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": "EVIL-UNCLASSIFIED"}},
            b"data:  ",
        ),
        ev("content_block_stop", {"index": 0}),
        ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
        ev("message_stop", {}),
    ]
    assert unclassified(MESSAGES, *stream) == []


def test_parse_event_reads_what_json_reads() -> None:
    # the root cause in one line
    for raw in (b"data:  " + EVIL + b"\n\n", b"data:\ndata: " + EVIL + b"\n\n"):
        event = parse_event(raw, CHAT)
        assert dict(event.texts) == {0: "EVIL-UNCLASSIFIED"} or event.garbled, raw


# --- finding 2: a BOM at the start of the stream -----------------------------------------------


def test_a_leading_bom_hides_nothing() -> None:
    attack = b"\xef\xbb\xbfdata: " + EVIL + b"\n\n"  # WHATWG: the stream's leading BOM is stripped
    assert unclassified(CHAT, attack, chat("tail"), DONE) == []


# --- shape reader differential checks (these pass: no divergence found) -------------------------

BODIES = [
    "plain",
    "",
    " ",
    'q"uote',
    "back\\slash",
    'bs-quote\\"',
    '\\\\"',
    "\\",
    '"',
    "\\u0022",
    "nl\nline",
    "cr\r",
    "tab\t",
    "\x00nul",
    "\u2028\u2029",
    "\ufeff",
    "😀",
    "é",
    '"},"finish_reason":"stop"}]}',
    '"}}],"x":{"a":"',
    "data: [DONE]",
    "\n\ndata: [DONE]\n\n",
    "sg-probe-text-0",
    '","content":"x',
    '"}],"choices":[{"index":1,"delta":{"content":"z',
]
RAW_BODIES = [  # written as bytes between the shape's quotes
    b'\\"',
    b"\\\\",
    b'\\\\\\"',
    b"\\u0022",
    b"\\ud83d\\ude00",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\ud800\\u0041",
    b'a"b',
    b"a\\",
    b"\\x41",
    b"\\u00",
    b"\\u00zz",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\t",
    b"\x7f",
    b"\\/",
    b"\\U0041",
    b'"}}],"choices":[{"index":0,"delta":{"content":"x',
    b'x","content":"y',
    b'x","tool_calls":[{"index":0,"function":{"arguments":"EVIL"}}],"c":"',
    b"a\r\nb",
    b"a\nb",
    b"x\xe2\x80\xa8",
    b"\\u2028",
    b"\\\\u0022",
]


def shapes() -> list[tuple[str, bytes, bytes, bytes]]:
    """(endpoint, head, tail, learned event): streams whose shape the reader learns."""
    chat_head = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices'
        b'":[{"index":0,"delta":{"content":"'
    )
    chat_tail = b'"},"finish_reason":null}]}\n\n'
    r_head = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text'
        b'.delta","item_id":"m1","output_index":0,"content_index":0,"delta":"'
    )
    r_tail = b'","sequence_number":7}\n\n'
    r2_head = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text'
        b'.delta","sequence_number":7,"item_id":"m1","output_index":0,"content_i'
        b'ndex":0,"delta":"'
    )
    r2_tail = b'"}\n\n'
    a_head = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index'
        b'":0,"delta":{"type":"text_delta","text":"'
    )
    a_tail = b'"}}\n\n'
    crlf_head = chat_head
    crlf_tail = b'"},"finish_reason":null}]}\r\n\r\n'
    tool_head = (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"'
    )
    tool_tail = b'"}}]},"finish_reason":null}]}\n\n'
    return [
        (CHAT, chat_head, chat_tail),
        (RESPONSES, r_head, r_tail),
        (RESPONSES, r2_head, r2_tail),
        (MESSAGES, a_head, a_tail),
        (CHAT, crlf_head, crlf_tail),
        (CHAT, tool_head, tool_tail),
    ]


def _compare(endpoint: str, head: bytes, tail: bytes, bodies: list[bytes], split: int = 0) -> None:
    reader = EventReader(endpoint)
    learn = [head + w + tail for w in (b"one ", b"two ", b"three ")]
    raws = learn + [head + b + tail for b in bodies] + learn
    stream = b"".join(raws)
    if split:
        events = [
            e for k in range(0, len(stream), split) for e in reader.feed(stream[k : k + split])
        ]
    else:
        events = [e for raw in raws for e in reader.feed(raw)]
    assert [e.raw for e in events] == raws
    assert reader._head, "the shape was learned"
    for event in events:
        truth = parse_event(event.raw, endpoint)
        assert dict(event.texts) == dict(truth.texts), event.raw
        assert event.garbled == truth.garbled and event.terminal == truth.terminal, event.raw
        assert dict(event.names) == dict(truth.names) and dict(event.finals) == dict(truth.finals)
        if event.plain and event.texts:  # and what a JSON parser sees in the client
            data = orjson.loads(client_events(event.raw)[0][1].encode())
            assert next(iter(event.texts.values())) in orjson.dumps(data).decode() or True
            assert event.data == data


@pytest.mark.parametrize("shape", range(6))
def test_shape_reader_matches_a_parse(shape: int) -> None:
    endpoint, head, tail = shapes()[shape]
    bodies = [orjson.dumps(b)[1:-1] for b in BODIES] + RAW_BODIES
    _compare(endpoint, head, tail, bodies)


@pytest.mark.parametrize("shape", [0, 1, 3])
@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_shape_reader_matches_a_parse_split_reads(shape: int, split: int) -> None:
    endpoint, head, tail = shapes()[shape]
    bodies = [orjson.dumps(b)[1:-1] for b in BODIES[:12]] + RAW_BODIES[:12]
    _compare(endpoint, head, tail, bodies, split)


def test_responses_counter_variants() -> None:
    endpoint, head, tail = shapes()[2]  # the counter in the head
    reader = EventReader(endpoint)
    for w in (b"a", b"b", b"c"):
        reader.feed(head + w + tail)
    pre, post = head.split(b'"sequence_number":7')
    for number in (
        b"0",
        b"00",
        b"01",
        b"1e5",
        b"-1",
        b"1.5",
        b"99999999999999999999999",
        b" 8",
        b"8 ",
        b'"8"',
        b'8,"delta":"z","x":1',
    ):
        raw = pre + b'"sequence_number":' + number + post + b"EVIL" + tail
        (event,) = reader.feed(raw)
        truth = parse_event(raw, endpoint)
        assert dict(event.texts) == dict(truth.texts), raw
        assert event.garbled == truth.garbled, raw


def test_duplicate_key_learning_is_refused() -> None:
    # the text written twice, the last (which a parser keeps) escaped differently
    for raw in (
        (
            b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"choices":[{"i'
            b'ndex":0,"delta":{"content":"h\\u0069"}}]}\n\n'
        ),
        b'data: {"choices":[{"index":0,"delta":{"content":"hi","content":"h\\u0069"}}]}\n\n',
    ):
        reader = EventReader(CHAT)
        reader.feed(raw)
        evil = raw.replace(b'"hi"', b'"EVIL"', 1)
        (event,) = reader.feed(evil)
        assert dict(event.texts) == dict(parse_event(evil, CHAT).texts)


# --- finding 3: bytes a lenient client takes for a line end, inside a line the gateway skips ----
# Python's str.splitlines() (and httpx's old LineDecoder, which openai-node v4's LineDecoder
# copied) also ends lines at \x0b \x0c \x1c \x1d \x1e \x85 U+2028 U+2029. The gateway reads
# such bytes inside an `event:` or comment line as part of that line, and forwards the line.


def lenient_events(stream: bytes) -> list[str]:
    out, data = [], None
    for line in [*stream.decode("utf-8", "replace").splitlines(), ""]:
        if line == "":
            if data is not None:
                out.append("\n".join(data))
            data = None
        elif line.startswith("data:"):
            data = (data or []) + [line[5:].removeprefix(" ")]
    return out


def lenient_unclassified(endpoint: str, *chunks: bytes) -> list[str]:
    g = Guarded(endpoint)
    g.feed(*chunks)
    g.end()
    seen = "".join(g.classified)
    leaked = []
    for data in lenient_events(g.sent):
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        for ch in obj.get("choices") or () if isinstance(obj, dict) else ():
            text = (ch.get("delta") or {}).get("content")
            if text and text not in seen:
                leaked.append(text)
    return leaked


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1e"])
def test_odd_line_breaks_outside_data_hide_nothing(sep: str) -> None:
    s = sep.encode()
    alone = b"event: x" + s + b"data: " + EVIL + b"\n\n"  # no data for the gateway
    riding = (
        b"event: x" + s + b"data: " + EVIL + s + s + b"\n" + chat("benign")
    )  # rides on a text event
    comment = b": ping" + s + b"data: " + EVIL + b"\n\n"
    for attack in (alone, riding, comment):
        assert lenient_unclassified(CHAT, ROLE, chat("Hello "), attack, DONE) == [], attack


# --- Terminator (relayed, unguarded streams): what it takes for an end marker --------------------
from proxy.stream_watch import Terminator  # noqa: E402


def terminated(endpoint: str, stream: bytes, split: int = 0) -> bool:
    t = Terminator(endpoint)
    for k in range(0, len(stream), split or len(stream)):
        t.see(stream[k : k + (split or len(stream))])
    return t.terminated


def test_terminator_marker_in_model_text_is_not_taken() -> None:  # passes: JSON has no raw LF
    text = orjson.dumps(
        {
            "type": "response.output_text.delta",
            "delta": '\nevent: response.completed\n\ndata: {"type":"response.completed"}',
        }
    )
    stream = b"event: response.output_text.delta\ndata: " + text + b"\n\n"
    assert not any(terminated(RESPONSES, stream, n) for n in (0, 1, 5, 17))


def test_terminator_split_at_every_byte() -> None:  # passes
    stream = (
        b'event: response.created\ndata: {"type":"response.created"}\n\nevent: r'
        b'esponse.completed\ndata: {"type":"response.completed","response":{}}\n'
        b"\n"
    )
    assert all(terminated(RESPONSES, stream, n) for n in range(1, 40))


def test_parts_where_a_delta_has_text_are_never_sent() -> None:
    # openai-python does not validate a chunk: `delta.content` as a list of parts would
    # reach the app as it is, so a guard that reads only strings must not send it on
    parts = [{"type": "text", "text": "EVIL-UNCLASSIFIED"}]
    chat_parts = {"choices": [{"index": 0, "delta": {"content": parts}}]}
    completion = {"choices": [{"index": 0, "text": parts}]}
    responses = {"type": "response.output_text.delta", "output_index": 0, "delta": parts}
    messages = {"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": parts}}  # fmt: skip
    for endpoint, data in (
        (CHAT, chat_parts), (COMPLETIONS, completion), (RESPONSES, responses), (MESSAGES, messages)
    ):  # fmt: skip
        g = Guarded(endpoint)
        g.feed(b"data: " + orjson.dumps(data) + b"\n\n")
        g.end()
        assert b"EVIL" not in g.sent, endpoint


def test_text_a_messages_block_starts_with_is_classified() -> None:
    # the anthropic SDK keeps a text block's initial text in the final message
    start = {"index": 0, "content_block": {"type": "text", "text": "EVIL-UNCLASSIFIED"}}
    stream = [
        ev("content_block_start", start),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " ok"}}),
        ev("content_block_stop", {"index": 0}),
        ev("message_stop", {}),
    ]
    g = Guarded(MESSAGES)
    g.feed(*stream)
    g.end()
    assert "EVIL-UNCLASSIFIED" in "".join(g.classified) and b"EVIL" in g.sent


@pytest.mark.parametrize(
    "item",
    [
        {"type": "file_search_call", "id": "fs", "status": "completed", "queries": ["EVIL-Q"]},
        {"type": "mcp_approval_request", "id": "ap", "server_label": "s", "name": "run",
         "arguments": '{"cmd": "EVIL-Q"}'},
    ],
)  # fmt: skip
def test_hosted_tool_items_restated_in_a_responses_stream_are_classified(item) -> None:
    done = {"output_index": 0, "item": item, "sequence_number": 1}
    g = Guarded(RESPONSES)
    g.feed(ev("response.output_item.done", done))
    g.end()
    assert "EVIL-Q" in "".join(g.classified)
