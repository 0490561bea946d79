"""proxy/guard/streaming.py: the pure hold-back `Window` and the frames that end a stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.guard.detectors import MAX_SPAN_CHARS, find_spans, redact
from proxy.guard.streaming import (
    Sealed,
    Window,
    end_frames,
    error_frame,
    hold_chars,
)
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES
from proxy.sse import Event, EventSplitter, parse_event


def ev(*texts: str | None, **by_index: str) -> Event:
    """A chat chunk: positional texts for choices 0, 1, ...; None for no content."""
    choices = [
        {"index": i, "delta": {} if t is None else {"content": t}} for i, t in enumerate(texts)
    ]
    choices += [{"index": int(i[1:]), "delta": {"content": t}} for i, t in by_index.items()]
    return parse_event(b"data: " + orjson.dumps({"choices": choices}) + b"\n\n", CHAT)


def push_all(window: Window, *events: Event) -> list[Sealed]:
    return [s for s in map(window.push, events) if s is not None]


# --- sealing -----------------------------------------------------------------------------


def test_seals_once_window_chars_are_held() -> None:
    window = Window(10, overlap=0)
    first, second, third = ev("abcd"), ev("efgh"), ev("ij")
    assert window.push(first) is None
    assert window.push(second) is None
    sealed = window.push(third)
    assert sealed is not None
    assert sealed.events == [first, second, third]
    assert sealed.texts == {0: "abcdefghij"}


def test_counting_restarts_after_a_seal() -> None:
    window = Window(10, overlap=0)
    assert len(push_all(window, ev("0123456789"), ev("abc"), ev("defg"))) == 1
    sealed = window.push(ev("hij"))
    assert sealed is not None
    assert sealed.texts == {0: "abcdefghij"}


def test_events_without_text_travel_with_their_window() -> None:
    window = Window(5, overlap=0)
    role, finish = ev(None), ev(None)
    assert window.push(role) is None
    sealed = window.push(ev("hello"))
    assert sealed is not None and sealed.events[0] is role
    assert window.push(finish) is None
    tail = window.flush()
    assert tail is not None
    assert tail.events == [finish]
    assert tail.texts == {}


def test_flush_releases_the_rest_then_nothing() -> None:
    window = Window(100, overlap=0)
    push_all(window, ev("short"), ev(" answer"))
    sealed = window.flush()
    assert sealed is not None and sealed.texts == {0: "short answer"}
    assert window.flush() is None
    assert Window(100, overlap=0).flush() is None


def test_buffer_mode_never_seals_until_flush() -> None:
    window = Window(None, overlap=0)
    assert push_all(window, *(ev("x" * 1000) for _ in range(5))) == []
    sealed = window.flush()
    assert sealed is not None and len(sealed.texts[0]) == 5000


# --- hold-back ---------------------------------------------------------------------------


def test_hold_keeps_the_last_hold_chars_back() -> None:
    window = Window(10, overlap=0, hold=4)
    assert push_all(window, ev("aaaaa"), ev("bbbbb")) == []  # 10 < size + hold
    sealed = window.push(ev("cccc"))
    assert sealed is not None
    assert sealed.texts == {0: "aaaaabbbbb"}
    rest = window.flush()
    assert rest is not None and rest.texts == {0: "cccc"}


def test_hold_keeps_whole_events_covering_at_least_hold_chars() -> None:
    window = Window(10, overlap=0, hold=4)
    sealed = push_all(window, ev("aaaaaaaaaa"), ev("bb"), ev("cc"))
    assert [s.texts for s in sealed] == [{0: "aaaaaaaaaa"}]
    rest = window.flush()
    assert rest is not None and rest.texts == {0: "bbcc"}


def test_held_chars_count_toward_the_next_window() -> None:
    window = Window(10, overlap=0, hold=4)
    push_all(window, ev("aaaaaaaaaa"), ev("bbbb"))  # seals "aaaaaaaaaa", holds "bbbb"
    assert window.push(ev("cccccc")) is None  # 10 held
    sealed = window.push(ev("dddd"))  # 14 held: seal, keep "dddd"
    assert sealed is not None and sealed.texts == {0: "bbbbcccccc"}


def test_an_event_longer_than_hold_stays_back_whole() -> None:
    window = Window(10, overlap=0, hold=4)
    assert window.push(ev("x" * 30)) is None  # it holds the last 4 chars: nothing to seal
    assert window.push(ev("yy")) is None
    sealed = window.push(ev("yy"))
    assert sealed is not None and sealed.texts == {0: "x" * 30}


def test_a_seal_never_splits_a_detector_match() -> None:
    pieces = ("hello, mail jane", ".doe@corp-mail.com", " thanks, bye now")
    plain = Window(16, overlap=0, hold=8)
    assert push_all(plain, *map(ev, pieces))[0].texts == {0: pieces[0]}  # cuts the address
    window = Window(16, overlap=0, hold=8, detectors=("email",))
    sealed = push_all(window, *map(ev, pieces))
    assert [s.texts for s in sealed] == [{0: pieces[0] + pieces[1]}]


def test_windows_redact_like_the_whole_text_with_adjacent_matches() -> None:
    pieces = ("cards: 4111 1111", " 1111 1111 and 5555", " 5555 5555 4444 ok")
    window = Window(16, overlap=0, hold=4, detectors=("credit_card",))
    sealed = [*push_all(window, *map(ev, pieces)), window.flush()]

    def redacted(text: str) -> str:
        return redact(text, find_spans(text, ["credit_card"]))

    released = "".join(redacted(s.texts[0]) for s in sealed if s is not None)
    assert released == redacted("".join(pieces))
    assert "4111" not in released


def test_hold_chars_covers_the_longest_possible_match() -> None:
    assert hold_chars(()) == 0
    assert hold_chars(("email", "phone")) == 128
    assert hold_chars(("email", "secret")) == MAX_SPAN_CHARS


def test_nothing_is_lost_or_reordered() -> None:
    window = Window(16, overlap=5, hold=7, detectors=("email",))
    pieces = [f"word{i} " if i % 7 else f"w{i}@mail-host.org " for i in range(40)]
    sealed = push_all(window, *(ev(p) for p in pieces))
    final = window.flush()
    assert final is not None
    assert "".join(s.texts.get(0, "") for s in [*sealed, final]) == "".join(pieces)


# --- overlap context ---------------------------------------------------------------------


def test_each_window_gets_the_tail_of_the_text_before_it() -> None:
    window = Window(10, overlap=3)
    sealed = push_all(window, ev("0123456789"), ev("abcdefghij"), ev("ABCDEFGHIJ"))
    assert [s.context for s in sealed] == [{0: ""}, {0: "789"}, {0: "hij"}]


def test_overlap_longer_than_a_window_reaches_back_further() -> None:
    window = Window(16, overlap=20)
    sealed = push_all(window, ev("a" * 16), ev("b" * 16), ev("c" * 16))
    assert [s.context[0] for s in sealed] == ["", "a" * 16, "a" * 4 + "b" * 16]


def test_no_overlap_means_no_context() -> None:
    window = Window(10, overlap=0)
    sealed = push_all(window, ev("0123456789"), ev("abcdefghij"))
    assert [s.context for s in sealed] == [{0: ""}, {0: ""}]


# --- several choices --------------------------------------------------------------------


def test_texts_and_context_are_kept_per_choice() -> None:
    window = Window(10, overlap=2)
    first = push_all(window, ev("aaa", "111"), ev("aa", "11"))  # 10 chars over both choices
    assert [s.texts for s in first] == [{0: "aaaaa", 1: "11111"}]
    second = push_all(window, ev("bbbbb"), ev(c1="22222"))
    assert [(s.texts, s.context) for s in second] == [
        ({0: "bbbbb", 1: "22222"}, {0: "aa", 1: "11"})
    ]


# --- end_frames / error_frame ------------------------------------------------------------


def frames(raw: bytes, endpoint: str) -> list[Event]:
    splitter = EventSplitter()
    events = [parse_event(e, endpoint) for e in splitter.feed(raw)]
    assert splitter.rest() == b"", "every frame is terminated"
    return events


LAST_CHAT: dict[str, Any] = {
    "id": "chatcmpl-9",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "gpt-4o",
    "system_fingerprint": "fp_1",
    "service_tier": "default",
    "choices": [{"index": 1, "delta": {"content": "x"}}, {"index": 0, "delta": {}}],
}


def test_chat_end_frames_finish_every_choice_then_done() -> None:
    last, done = frames(end_frames(CHAT, LAST_CHAT), CHAT)
    assert last.data == {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "delta": {}, "finish_reason": "content_filter"},
            {"index": 1, "delta": {}, "finish_reason": "content_filter"},
        ],
    }
    assert done.done


def test_chat_end_frames_before_any_chunk() -> None:
    last, done = frames(end_frames(CHAT, None), CHAT)
    assert last.data == {"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}
    assert done.done


def test_completions_end_frames_use_empty_text() -> None:
    last_chunk = {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0}]}
    last, done = frames(end_frames(COMPLETIONS, last_chunk, reason="length"), COMPLETIONS)
    assert last.data is not None
    assert last.data["choices"] == [{"index": 0, "text": "", "finish_reason": "length"}]
    assert done.done


def test_responses_end_frame_is_response_incomplete() -> None:
    created = {
        "type": "response.created",
        "response": {"id": "resp_1", "model": "gpt-4o", "status": "in_progress", "output": []},
    }
    (event,) = frames(end_frames(RESPONSES, created), RESPONSES)
    assert event.name == event.type == "response.incomplete"
    assert event.data is not None
    response = event.data["response"]
    assert response["id"] == "resp_1"
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "content_filter"}
    assert response["output"] == []
    assert created["response"]["status"] == "in_progress"  # the seen event is not mutated


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS])
def test_error_frame_chat_and_completions(endpoint: str) -> None:
    (event,) = frames(error_frame(endpoint, "withheld", "guard_unavailable"), endpoint)
    assert event.data == {
        "error": {
            "message": "withheld",
            "type": "server_error",
            "param": None,
            "code": "guard_unavailable",
        }
    }


def test_error_frame_responses() -> None:
    (event,) = frames(error_frame(RESPONSES, "withheld", "guard_unavailable"), RESPONSES)
    assert event.name == "error"
    error = {
        "message": "withheld",
        "type": "server_error",
        "param": None,
        "code": "guard_unavailable",
    }
    assert event.data == {
        "type": "error",
        "code": "guard_unavailable",
        "message": "withheld",
        "param": None,
        "error": error,  # the SDKs raise on an event whose data has an `error` member
    }


def test_seal_early_releases_what_the_hold_allows() -> None:
    window = Window(400, overlap=0, hold=5, detectors=("email",))
    assert window.seal_early() is None  # nothing waiting
    push_all(window, ev("abc"), ev("de"))
    assert window.seal_early() is None  # all of it is inside the hold
    push_all(window, ev(" mail jo@"), ev("example.com"), ev(" ok"))
    sealed = window.seal_early()
    # the event holding the address's start stays back with it: never half an address
    assert sealed is not None and sealed.texts == {0: "abcde"}
    assert window.waiting == len(" mail jo@example.com ok")
