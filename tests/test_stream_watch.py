"""proxy/stream_watch.py: a relayed stream's terminator, whatever the read boundaries."""

from __future__ import annotations

import orjson
import pytest

from proxy.anthropic_api import MESSAGES
from proxy.openai_api import CHAT, RESPONSES
from proxy.sse import EventReader, EventSplitter, parse_event
from proxy.stream_watch import StreamWatch, Terminator

CHAT_STREAM = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
RESPONSES_STREAM = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n'
)


@pytest.mark.parametrize(
    ("endpoint", "stream"), [(CHAT, CHAT_STREAM), (RESPONSES, RESPONSES_STREAM)]
)
def test_the_terminator_is_seen_at_every_read_boundary(endpoint: str, stream: bytes) -> None:
    for cut in range(len(stream) + 1):
        ends = Terminator(endpoint)
        ends.see(stream[:cut])
        ends.see(stream[cut:])
        assert ends.terminated, cut


@pytest.mark.parametrize(
    ("endpoint", "stream"), [(CHAT, CHAT_STREAM), (RESPONSES, RESPONSES_STREAM)]
)
def test_a_stream_cut_before_its_terminator_is_not_terminated(endpoint: str, stream: bytes) -> None:
    marker = stream.index(b"[DONE]" if endpoint == CHAT else b"response.completed")
    for cut in range(marker + 1):
        ends = Terminator(endpoint)
        ends.see(stream[:cut])
        assert not ends.terminated, cut


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        (RESPONSES, "response.completed"),
        (RESPONSES, "event: response.completed\n"),
        (RESPONSES, '{"type":"response.failed"}'),
        (MESSAGES, "event: message_stop\n"),
        (MESSAGES, "error"),
    ],
)
def test_a_model_writing_the_end_events_name_does_not_end_the_stream(
    endpoint: str, said: str
) -> None:
    # The upstream drops the stream right after a text delta naming the ending event.
    if endpoint == RESPONSES:
        data = {"type": "response.output_text.delta", "output_index": 0, "delta": said}
        event = b"event: response.output_text.delta\ndata: " + orjson.dumps(data) + b"\n\n"
    else:
        data = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                "text": said}}  # fmt: skip
        event = b"event: content_block_delta\ndata: " + orjson.dumps(data) + b"\n\n"
    ends = Terminator(endpoint)
    ends.see(event)
    assert not ends.terminated


def test_an_end_event_without_an_event_line_still_ends_the_stream() -> None:
    ends = Terminator(RESPONSES)
    ends.see(b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n')
    ends.see(b'data: {"type":"response.completed","response":{}}\n\n')
    assert ends.terminated


def test_the_watch_notes_a_stream_read_by_its_shape_like_one_parsed_whole() -> None:
    def chunk(i: int, **extra: object) -> bytes:
        choice = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
        return (
            b"data: "
            + orjson.dumps({"id": "c1", "model": "m", "choices": [choice]} | extra)
            + b"\n\n"
        )

    body = b"".join(chunk(i) for i in range(5))
    usage = {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    end = {
        "id": "c1",
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    tail = b"data: " + orjson.dumps(end | {"usage": usage}) + b"\n\ndata: [DONE]\n\n"
    read, parsed = StreamWatch(CHAT), StreamWatch(CHAT)
    events = EventReader(CHAT).feed(body + chunk(9))
    assert not any(isinstance(e._data, dict) for e in events[1:])  # read by the shape
    read.events(events)
    assert read.last == orjson.loads(chunk(9)[6:])  # a cut stream: its last chunk
    read.events(EventReader(CHAT).feed(tail))
    for raw in EventSplitter().feed(body + chunk(9) + tail):
        parsed.event(parse_event(raw, CHAT))
    assert (
        (read.last, read.usage, read.finish_reasons)
        == (
            parsed.last,
            parsed.usage,
            parsed.finish_reasons,
        )
        == (end | {"usage": usage}, usage, ["stop"])
    )
