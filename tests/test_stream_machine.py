"""proxy/guard/stream_machine.py as transcripts: events, verdicts and ticks in, actions out.

No sockets, no event loop: each test feeds wire events (as the upstream sends them) and
verdicts, and reads what the machine tells the driver to do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from proxy.anthropic_api import MESSAGES
from proxy.guard.engine import Outcome
from proxy.guard.safeguard import Verdict
from proxy.guard.stream_machine import (
    Classify,
    End,
    Judged,
    Release,
    StreamMachine,
    WakeAt,
)
from proxy.guard.window import Window
from proxy.openai_api import CHAT, COMPLETIONS, RESPONSES
from proxy.policies import Policy
from proxy.sse import EventReader, EventSplitter, parse_event

HARM = Policy("harm", "policy text", "v1", action="block", category="H1")
NOTE = Policy("note", "policy text", "v1", action="annotate")


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def chat(*choices: dict, **extra: Any) -> bytes:
    return sse(
        {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": list(choices)}
        | extra
    )


def delta(i: int = 0, finish: str | None = None, **fields: Any) -> dict:
    return {"index": i, "delta": fields, "finish_reason": finish}


def tool(k: int, arguments: str, name: str | None = None) -> dict:
    function = {"arguments": arguments} | ({"name": name} if name else {})
    return {"index": k, "function": function}


def resp(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, kind)


DONE = b"data: [DONE]\n\n"


class Transcript:
    """Drives one machine; keeps what it was told to send and to classify."""

    def __init__(
        self,
        endpoint: str = CHAT,
        *,
        size: int | None = 400,
        first: int | None = None,
        overlap: int = 0,
        mode: str = "window",
        wait_s: float = 1.0,
        hold: int = 0,
        detectors: tuple[str, ...] = (),
        fail: str = "closed",
    ) -> None:
        window = Window(size, overlap, hold, detectors, first=first)
        self.machine = StreamMachine(endpoint, window, mode=mode, fail=fail, wait_s=wait_s)
        self.endpoint = endpoint
        self.reader = EventReader(endpoint)
        self.now = 0.0
        self.actions: list[Any] = []

    def take(self, actions: list[Any]) -> list[Any]:
        self.actions += actions
        return actions

    def feed(self, *raws: bytes) -> list[Any]:
        """Each event as one upstream read, read as the stream guard reads them (the bulk by
        the stream's shape, see EventReader)."""
        out: list[Any] = []
        for raw in raws:
            out += self.machine.events(self.reader.feed(raw), self.now)
        return self.take(out)

    def judge(
        self, action: Classify, flag: str = "bad", policy: Policy = HARM, **released: str
    ) -> list[Any]:
        outcomes = tuple(
            Outcome(
                policy, policy.action, "output", Verdict(policy.id, "v1", flag in text), choice=0
            )
            for text in action.texts.values()
        )
        kept = {k: released.get(str(k), t) for k, t in action.texts.items()}
        return self.take(self.machine.verdict(action.seq, Judged(outcomes, kept)))

    def judge_all(self, flag: str = "bad") -> None:
        """Answer every classification not answered yet, oldest first."""
        answered: set[int] = set()
        while pending := [a for a in self.classified if a.seq not in answered]:
            answered.add(pending[0].seq)
            self.judge(pending[0], flag)

    @property
    def classified(self) -> list[Classify]:
        return [a for a in self.actions if isinstance(a, Classify)]

    @property
    def sent(self) -> bytes:
        return b"".join(a.data for a in self.actions if isinstance(a, (Release, End)))

    @property
    def ended(self) -> End | None:
        return self.machine.ended


def events(raw: bytes, endpoint: str) -> list[Any]:
    return [parse_event(e, endpoint) for e in EventSplitter().feed(raw)]


# --- Chat Completions ---------------------------------------------------------------------


def test_chat_text_is_classified_then_released_byte_for_byte() -> None:
    t = Transcript(size=10)
    role = chat(delta(role="assistant", content=""))
    pieces = [chat(delta(content=w)) for w in ("Hello ", "there, ", "friend.")]
    assert t.feed(role) == [Release(role)]  # no unchecked text ahead of it: out at once
    t.feed(*pieces[:2])
    (first,) = t.classified
    assert dict(first.texts) == {0: "Hello there, "}
    assert t.sent == role  # the text waits for its verdict
    t.judge(first)
    assert t.sent == role + pieces[0] + pieces[1]
    t.feed(pieces[2], chat(delta(finish="stop")), DONE)
    (last,) = t.take(t.machine.upstream_end())  # the rest is classified, then it ends
    assert dict(last.texts) == {0: "friend."}
    t.judge_all()
    assert (
        t.sent
        == role
        + b"".join(pieces)
        + chat(delta(finish="stop")).replace(
            b'"finish_reason":"stop"}',
            b'"finish_reason":"stop","content_filter_results":'
            b'{"harm":{"filtered":false,"detected":false}}}',
        )
        + DONE
    )
    assert t.ended == End(b"", "complete")


def test_windows_go_out_in_order_whatever_order_verdicts_arrive_in() -> None:
    t = Transcript(size=4)
    t.feed(chat(delta(content="aaaa")), chat(delta(content="bbbb")))
    first, second = t.classified
    assert t.judge(second) == []  # the first window is not cleared yet
    released = t.judge(first)
    assert [type(a) for a in released] == [Release, Release]
    assert b"aaaa" in released[0].data and b"bbbb" in released[1].data


def test_a_flagged_window_ends_with_content_filter_and_is_never_sent() -> None:
    t = Transcript(size=8)
    t.feed(chat(delta(content="fine text ")), chat(delta(content="bad words here")))
    first, second = t.classified
    t.judge(first)
    (end,) = t.judge(second)
    assert end == t.ended and end.reason == "content_filter"
    assert b"bad words" not in t.sent
    last, done = events(end.data, CHAT)
    assert last.data["choices"] == [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]
    assert last.data["id"] == "c1" and done.done
    assert t.feed(chat(delta(content="more"))) == []  # ended: nothing else happens


def test_streamed_tool_call_arguments_are_a_guarded_channel_named_after_the_tool() -> None:
    t = Transcript(size=16)
    start = {"id": "call_1", "type": "function"} | tool(0, "", "delete_files")
    t.feed(chat(delta(role="assistant", tool_calls=[start])))
    t.feed(*(chat(delta(tool_calls=[tool(0, p)])) for p in ('{"path": ', '"/ bad idea"}')))
    (window,) = t.classified
    assert dict(window.texts) == {(0, "tool", 0): '{"path": "/ bad idea"}'}
    assert dict(window.tools) == {(0, "tool", 0): "delete_files"}
    (end,) = t.judge(window)
    assert end.reason == "content_filter"
    assert b"bad idea" not in t.sent and b"/" not in t.sent


def test_parallel_tool_calls_legacy_function_call_and_refusal_each_get_a_channel() -> None:
    t = Transcript(size=1000)
    t.feed(
        chat(delta(tool_calls=[tool(0, '{"a":1}', "f"), tool(1, '{"b":2}', "g")])),
        chat(delta(function_call={"name": "legacy", "arguments": '{"c":3}'})),
        chat(delta(refusal="I can't help with that.")),
        chat(delta(finish="stop")),
        DONE,
    )
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    assert dict(window.texts) == {
        (0, "tool", 0): '{"a":1}',
        (0, "tool", 1): '{"b":2}',
        (0, "function", 0): '{"c":3}',
        (0, "refusal", 0): "I can't help with that.",
    }
    assert dict(window.tools) == {
        (0, "tool", 0): "f",
        (0, "tool", 1): "g",
        (0, "function", 0): "legacy",
    }


def test_every_choice_of_n_is_guarded_and_a_flag_in_any_ends_the_stream() -> None:
    t = Transcript(size=12)
    t.feed(chat(delta(0, content="all good "), delta(1, content="bad stuff ")))
    (window,) = t.classified
    assert dict(window.texts) == {0: "all good ", 1: "bad stuff "}
    (end,) = t.judge(window)
    last, _ = events(end.data, CHAT)
    assert [c["index"] for c in last.data["choices"]] == [0, 1]
    assert t.sent.count(b"bad stuff") == 0


def test_redacted_tool_arguments_go_out_rewritten_in_the_window_s_first_event() -> None:
    t = Transcript(size=18)
    t.feed(*(chat(delta(tool_calls=[tool(0, p)])) for p in ('{"to": "jo', '@x.com"}')))
    (window,) = t.classified
    t.judge(window, flag="never", **{str((0, "tool", 0)): '{"to": "[REDACTED:EMAIL]"}'})
    first, second = events(t.sent, CHAT)
    assert first.texts == {(0, "tool", 0): '{"to": "[REDACTED:EMAIL]"}'}
    assert second.texts == {}
    assert b"jo@x.com" not in t.sent


# --- Completions --------------------------------------------------------------------------


def test_completions_text_windows_and_block() -> None:
    t = Transcript(COMPLETIONS, size=6)

    def chunk(text):
        return sse(
            {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": text}]}
        )

    t.feed(chunk("good, "), chunk("bad!"))
    t.take(t.machine.upstream_end())
    first, second = t.classified
    assert dict(first.texts) == {0: "good, "}
    t.judge(first)
    (end,) = t.judge(second)
    assert b"good, " in t.sent and b"bad!" not in t.sent
    last, _done = events(end.data, COMPLETIONS)
    assert last.data["choices"] == [{"index": 0, "text": "", "finish_reason": "content_filter"}]


# --- Responses ----------------------------------------------------------------------------

CREATED = resp("response.created", response={"id": "r1", "status": "in_progress", "output": []})


def test_responses_function_call_arguments_are_guarded_and_done_events_wait_for_them() -> None:
    t = Transcript(RESPONSES, size=1000)
    item = {"type": "function_call", "id": "fc", "name": "send_money", "arguments": ""}
    t.feed(CREATED, resp("response.output_item.added", output_index=1, item=item))
    t.feed(
        *(
            resp("response.function_call_arguments.delta", output_index=1, delta=p)
            for p in ('{"to":', '"bad guy"}')
        )
    )
    t.feed(
        resp("response.function_call_arguments.done", output_index=1, arguments='{"to":"bad guy"}')
    )
    assert b"bad guy" not in t.sent
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    assert dict(window.texts) == {1: '{"to":"bad guy"}'} and dict(window.tools) == {1: "send_money"}
    (end,) = t.judge(window)
    assert end.reason == "content_filter"
    assert b"bad guy" not in t.sent
    (incomplete,) = events(end.data, RESPONSES)
    assert incomplete.type == "response.incomplete"
    assert incomplete.data["response"]["incomplete_details"] == {"reason": "content_filter"}


def test_responses_arguments_sent_only_whole_are_guarded_from_the_done_event() -> None:
    t = Transcript(RESPONSES, size=1000)
    item = {"type": "function_call", "id": "fc", "name": "run", "arguments": '{"cmd":"bad"}'}
    t.feed(CREATED, resp("response.output_item.done", output_index=0, item=item))
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    assert dict(window.texts) == {0: '{"cmd":"bad"}'} and dict(window.tools) == {0: "run"}
    t.judge(window)
    assert t.ended is not None and t.ended.reason == "content_filter"


def test_responses_text_redaction_is_restated_in_the_done_events() -> None:
    t = Transcript(RESPONSES, size=1000)
    t.feed(CREATED, resp("response.output_text.delta", output_index=0, delta="mail jo@x.com"))
    t.feed(resp("response.output_text.done", output_index=0, text="mail jo@x.com"))
    t.feed(
        resp(
            "response.completed",
            response={
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "content": [{"type": "output_text", "text": "mail jo@x.com"}],
                    }
                ],
            },
        )
    )
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    t.judge(window, flag="never", **{"0": "mail [REDACTED:EMAIL]"})
    assert b"jo@x.com" not in t.sent
    assert t.sent.count(b"[REDACTED:EMAIL]") == 3  # the delta, the done event, the response
    completed = events(t.sent, RESPONSES)[-1]
    assert completed.data["response"]["content_filter_results"] == {
        "harm": {"filtered": False, "detected": False}
    }
    assert t.ended == End(b"", "complete")


# --- time, growth, endings ----------------------------------------------------------------


def test_text_that_waited_window_ms_is_sealed_on_a_tick() -> None:
    t = Transcript(size=400, wait_s=0.5)
    t.now = 10.0
    assert t.feed(chat(delta(content="slow "))) == [WakeAt(10.5)]
    t.now = 10.3
    t.feed(chat(delta(content="stream")))
    assert t.take(t.machine.tick(10.2)) == [WakeAt(10.5)]  # an early timer: not due yet
    (classify,) = t.take(t.machine.tick(10.5))
    assert dict(classify.texts) == {0: "slow stream"}


def test_windows_grow_so_the_first_is_small_and_a_long_answer_costs_few_calls() -> None:
    t = Transcript(size=400, first=24, overlap=120)
    t.feed(*(chat(delta(content=f"tok{i:02} ")) for i in range(100)))  # 600 chars
    t.take(t.machine.upstream_end())
    sizes = [len(a.texts[0]) for a in t.classified]
    assert sizes[0] <= 30  # the first token waits for ~24 characters, not 400
    assert sizes[:4] == sorted(sizes[:4])  # ...and windows grow after it
    assert len(sizes) <= 6
    assert t.classified[1].context[0] == t.classified[0].texts[0][-120:]  # overlap kept


def test_a_stream_ended_without_its_terminator_ends_in_an_error_after_the_cleared_text() -> None:
    t = Transcript(size=400)
    t.feed(chat(delta(content="half an ans")))
    assert t.take(t.machine.upstream_end()) == [t.classified[0]]
    (release, end) = t.judge(t.classified[0])
    assert b"half an ans" in release.data
    assert end.reason == "upstream_dropped" and t.machine.failure == "upstream_dropped"
    error, done = events(end.data, CHAT)
    assert error.data["error"]["code"] == "upstream_dropped" and done.done


@pytest.mark.parametrize(
    ("code", "reason"),
    [("upstream_timeout", "upstream_timeout"), ("upstream_unavailable", "upstream_dropped")],
)
def test_an_upstream_read_failure_names_its_cause(code: str, reason: str) -> None:
    t = Transcript(RESPONSES, mode="passthrough")
    assert t.feed(CREATED) == [Release(CREATED)]  # passthrough: at once
    (end,) = t.take(t.machine.upstream_error(code))
    assert end.reason == reason
    (error, done) = events(end.data, RESPONSES)
    assert error.name == "error" and error.data["error"]["code"] == reason and done.done


def test_a_failure_after_the_terminator_is_a_complete_stream() -> None:
    t = Transcript(mode="passthrough")
    t.feed(chat(delta(content="x")), DONE)
    assert t.take(t.machine.upstream_error("upstream_unavailable")) == [End(b"", "complete")]


def test_a_window_whose_judging_failed_ends_in_guard_unavailable() -> None:
    t = Transcript(size=4)
    t.feed(chat(delta(content="text")))
    (end,) = t.take(t.machine.verdict(t.classified[0].seq, None))
    assert end.reason == "guard_unavailable" and b"text" not in t.sent


def test_an_annotating_verdict_releases_and_is_on_the_finishing_chunk() -> None:
    t = Transcript(size=1000)
    t.feed(chat(delta(content="buy now")), chat(delta(finish="stop")), DONE)
    t.take(t.machine.upstream_end())
    t.judge(t.classified[0], flag="buy", policy=NOTE)
    assert t.machine.decision == "annotate"
    finishing = events(t.sent, CHAT)[1]
    assert finishing.data["choices"][0]["content_filter_results"] == {
        "note": {"filtered": False, "detected": True, "category": "note"}
    }


def test_actions_are_immutable() -> None:
    t = Transcript(size=4)
    t.feed(chat(delta(content="text")))
    (classify,) = t.classified
    with pytest.raises(dataclasses.FrozenInstanceError):
        classify.seq = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        classify.texts[0] = "other"  # type: ignore[index]


def test_events_read_together_make_one_window_not_many_small_ones() -> None:
    """An upstream faster than the classifier: what one read brought makes windows of
    window_chars, not growing ones from first_window_chars."""
    t = Transcript(size=400, first=24)
    read = [parse_event(chat(delta(content=f"tok{i:02} ")), CHAT) for i in range(100)]
    t.take(t.machine.events(read[:60], 0.0))
    t.take(t.machine.events(read[60:], 0.0))
    assert [len(a.texts[0]) for a in t.classified] == [360, 240]
    big = Transcript(size=100, first=24)
    big.take(big.machine.events(read, 0.0))
    assert [len(a.texts[0]) for a in big.classified] == [102] * 5  # 90 wait for more
    trickled = Transcript(size=400, first=24)
    for event in read:
        trickled.take(trickled.machine.events([event], 0.0))
    assert len(trickled.classified) > 2  # one event a read: the windows grow from 24


def test_responses_text_sent_only_in_a_content_part_done_is_guarded() -> None:
    t = Transcript(RESPONSES, size=1000)
    part = {"type": "output_text", "text": "a bad text never streamed as deltas"}
    t.feed(CREATED, resp("response.content_part.done", output_index=0, content_index=0, part=part))
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    assert dict(window.texts) == {0: part["text"]}
    t.judge(window)
    assert t.ended is not None and t.ended.reason == "content_filter"
    assert b"never streamed" not in t.sent


def test_messages_events_without_an_event_line_are_read_as_messages_events() -> None:
    t = Transcript(MESSAGES, size=1000)
    flagged = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    flagged["delta"]["text"] = "a bad text in a data-only event"
    t.feed(sse(flagged), sse({"type": "message_stop"}))
    t.take(t.machine.upstream_end())
    (window,) = t.classified
    assert dict(window.texts) == {0: "a bad text in a data-only event"}
    t.judge(window)
    assert b"data-only" not in t.sent


def test_a_garbled_messages_block_index_reads_as_block_zero() -> None:
    delta = {"type": "text_delta", "text": "hello"}
    event = parse_event(
        sse({"type": "content_block_delta", "index": "x", "delta": delta}), MESSAGES
    )
    assert dict(event.texts) == {0: "hello"}


def test_a_streamed_custom_tool_calls_input_is_a_guarded_channel_too() -> None:
    t = Transcript(size=16)
    start = {"index": 0, "id": "call_1", "type": "custom", "custom": {"name": "sh", "input": ""}}
    t.feed(chat(delta(role="assistant", tool_calls=[start])))
    pieces = ("rm -rf ", "/ bad idea")
    t.feed(*(chat(delta(tool_calls=[{"index": 0, "custom": {"input": p}}])) for p in pieces))
    (window,) = t.classified
    assert dict(window.texts) == {(0, "tool", 0): "rm -rf / bad idea"}
    assert dict(window.tools) == {(0, "tool", 0): "sh"}
    t.judge(window)
    assert b"bad idea" not in t.sent
