"""Server-sent events as the three generation APIs use them: framing, text deltas, rewrites.

Events keep their raw bytes so anything forwarded unchanged is byte-identical to what
the upstream sent; only an event whose text is redacted is re-serialized.

Guardable text is keyed per channel: a choice's (or Responses output item's) content is
its plain index; tool-call arguments, legacy `function_call` arguments and refusals of
choice `i` are `(i, "tool", k)`, `(i, "function", 0)` and `(i, "refusal", 0)`; a choice's
audio transcript `(i, "audio", 0)` and, when the route guards reasoning (`thinking`), its
`reasoning_content`/`reasoning` `(i, "reasoning", 0)`. A Responses tool call item
(function, custom, MCP, code interpreter) is an output item of its own, so its streamed
text is keyed by its index; what an item says besides is keyed `(i, field, n)` (MCP output,
code logs, search queries; reasoning summaries `(i, "summary", n)` and reasoning text
`(i, "reasoning", n)` when the route guards reasoning).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Union

import orjson

from proxy import anthropic_sse
from proxy.anthropic_api import MESSAGES
from proxy.openai_api import COMPLETIONS, RESPONSES
from proxy.surfaces.chat import call_kind

Key = Union[int, tuple[int, str, int]]  # noqa: UP007 (a runtime alias)
Channel = Union[tuple[str, int], None]  # noqa: UP007 (an item's own text, or another of its)

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Responses events that end a stream (`error` included: the upstream said why it stopped)
RESPONSES_TERMINAL = frozenset(
    ("response.completed", "response.incomplete", "response.failed", "error")
)
_RESPONSES_DELTAS = frozenset(
    ("response.output_text.delta", "response.function_call_arguments.delta",
     "response.custom_tool_call_input.delta", "response.mcp_call_arguments.delta",
     "response.code_interpreter_call_code.delta")
)  # fmt: skip
# `*.done` events restating an item's streamed text whole: the field that holds it.
_RESPONSES_DONE = {
    "response.output_text.done": "text",
    "response.function_call_arguments.done": "arguments",
    "response.custom_tool_call_input.done": "input",
    "response.mcp_call_arguments.done": "arguments",
    "response.code_interpreter_call_code.done": "code",
}
# Reasoning events (guarded when the route says so): event -> (channel, its index field).
_REASONING_DELTAS = {
    "response.reasoning_text.delta": ("reasoning", "content_index"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index"),
}
_REASONING_DONE = {
    "response.reasoning_text.done": ("reasoning", "content_index"),
    "response.reasoning_summary_text.done": ("summary", "summary_index"),
}
# The streamed text of a tool call item: its type -> the field.
_CALL_TEXT = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "mcp_call": "arguments",
    "code_interpreter_call": "code",
}
# Items whose text is read by `_item_paths` (not a message's content parts).
_TOOL_ITEMS = frozenset(
    (
        *_CALL_TEXT,
        "web_search_call",
        "reasoning",
        "computer_call",
        "local_shell_call",
        "shell_call",
        "file_search_call",
        "mcp_approval_request",
    )
)
# A shell call's commands stream one by one: event -> the field with the whole command.
_SHELL_COMMAND = {
    "response.shell_call_command.added": "command",
    "response.shell_call_command.done": "command",
}
_CHAT_REASONING = ("reasoning_content", "reasoning")


class EventSplitter:
    """Cuts a byte stream into whole events (each with its terminating blank line).

    An event longer than one read is kept as a list of reads, and only the new read (with
    the three bytes before it) is searched for its end: linear in the event's size, where
    joining and rescanning on every read made a 4 MB event cost seconds of CPU.
    """

    def __init__(self) -> None:
        self._held: list[bytes] = []  # the reads of an event not ended yet
        self._edge = b""  # the last three bytes held (an end may straddle two reads)
        self.pending_bytes = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._held:
            if _BOUNDARY.search(self._edge + chunk) is None:  # the event goes on
                self._held.append(chunk)
                self._edge = chunk[-3:] if len(chunk) >= 3 else (self._edge + chunk)[-3:]
                self.pending_bytes += len(chunk)
                return []
            data = b"".join(self._held) + chunk
        else:
            data = chunk
        if b"\r" not in data:  # the common case, LF line ends: cut at each blank line
            events = data.split(b"\n\n")
            self._hold(events.pop())
            return [event + b"\n\n" for event in events]
        events, start = [], 0
        for match in _BOUNDARY.finditer(data):
            events.append(data[start : match.end()])
            start = match.end()
        self._hold(data[start:])
        return events

    def _hold(self, rest: bytes) -> None:
        self._held, self._edge, self.pending_bytes = ([rest] if rest else []), rest[-3:], len(rest)

    def rest(self) -> bytes:
        """Whatever trailed the last blank line when the stream ended."""
        rest = b"".join(self._held)
        self._hold(b"")
        return rest


NOTHING: Mapping[Any, str] = MappingProxyType({})  # the shared empty (read-only) mapping
_UNREAD: Any = object()  # an event's data not parsed yet


class Event:
    """One event; most carry one text delta and nothing else, so the mappings default to
    one shared read-only empty mapping (parsing assigns new dicts, never mutates them)."""

    __slots__ = (
        "_data",
        "done",
        "finals",
        "finishing",
        "garbled",
        "name",
        "names",
        "plain",
        "raw",
        "terminal",
        "texts",
    )

    def __init__(self, raw: bytes, name: str | None = None) -> None:
        self.raw = raw
        self.name = name  # the `event:` field (the Responses API names its events)
        self._data: dict[str, Any] | None = None
        self.plain = False  # a text delta and nothing else (its data may be read lazily)
        self.done = False  # `data: [DONE]`
        self.texts: Mapping[Key, str] = NOTHING  # channel -> text delta
        self.finals: Mapping[Key, str] = NOTHING  # channel -> whole text restated
        self.names: Mapping[Key, str] = NOTHING  # channel -> tool name
        self.terminal = False  # the stream's end marker (or an upstream error event)
        self.finishing = False  # closes a choice (a finish_reason) or the response
        self.garbled = False  # data that is not JSON (never sent on a guarded stream)

    def with_texts(self, texts: Mapping[Key, str]) -> Event:
        """A copy carrying other text deltas."""
        copy = Event(self.raw, self.name)
        for slot in self.__slots__:
            setattr(copy, slot, getattr(self, slot))
        copy.texts = texts
        return copy

    def __repr__(self) -> str:
        return f"Event({self.raw!r})"

    @property
    def data(self) -> dict[str, Any] | None:
        """The event's JSON object (None: no data, or not an object)."""
        data = self._data
        if data is _UNREAD:  # read like an event before it, but for its text (EventReader)
            data = self._data = orjson.loads(_fields(self.raw)[1] or b"null")
        return data

    @data.setter
    def data(self, data: dict[str, Any] | None) -> None:
        self._data = data

    @property
    def type(self) -> str | None:
        data = self.data
        return data.get("type") if data else None


_NOT_PLAIN = re.compile(rb'["\\\x00-\x1f]')  # what a JSON string's body holds only escaped
_ESCAPED = re.compile(rb'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')  # a string body
_PROBE = b"sg-probe-text-0"
_BOM = b"\xef\xbb\xbf"
_COUNTER = re.compile(rb'"sequence_number": ?([0-9]+)')  # Responses events count themselves
_NUMBER = re.compile(rb"0|[1-9][0-9]*")


class EventReader:
    """One stream's events from its bytes: cut (EventSplitter) and parsed (parse_event).

    A stream's bulk is text deltas that differ only in their text (same id, model,
    choice or block). Once one such delta is parsed, the bytes around its text are the
    stream's shape: a later event with exactly those bytes around a JSON string body is
    the same event with another text, read without parsing the event (its `data` is
    parsed only if asked for). A Responses event's `sequence_number` may differ too. The
    shape is checked once, by parsing it with a probe text (and another number)
    in place, used only if that text comes out as the delta's text and nothing else
    changes, and with an empty text, which must come out as no text.
    """

    def __init__(self, endpoint: str, thinking: bool = False) -> None:
        self.endpoint, self.thinking = endpoint, thinking
        self._splitter = EventSplitter()
        self._head = self._tail = b""  # the shape: the bytes around a plain delta's text
        self._after = b""  # with a counter in the head: the head's bytes after it
        self._ends = (0, 0)  # where the text starts, and ends (from the event's end)
        self._key: Key = 0
        self._name: str | None = None
        self._used = True  # the current shape matched an event since it was learned
        self._unused = 0  # shapes learned that never matched: past 3, stop learning
        self._start: bytes | None = b""  # the stream's first bytes, until past a BOM

    def feed(self, chunk: bytes) -> list[Event]:
        if self._start is not None:  # clients drop a stream's leading BOM (as SSE says)
            chunk = self._start + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._start = chunk
                return []
            self._start, chunk = None, chunk.removeprefix(_BOM)
        return [self._read(raw) for raw in self._splitter.feed(chunk)]

    @property
    def held(self) -> int:
        """Bytes of an event not ended yet."""
        return self._splitter.pending_bytes

    def rest(self) -> Event | None:
        """Whatever trailed the last blank line when the stream ended."""
        raw = self._splitter.rest()
        return self._read(raw) if raw else None

    def _read(self, raw: bytes) -> Event:
        if self._head and (text := self._shaped(raw)) is not None:
            self._used = True
            event = Event(raw, self._name)
            event._data, event.plain = _UNREAD, True
            if text:
                event.texts = {self._key: text}
            return event
        event = parse_event(raw, self.endpoint, self.thinking)
        if _plain(event):
            event.plain = True
            if self._unused < 3:
                self._learn(event)
        return event

    def _shaped(self, raw: bytes) -> str | None:
        """The text of an event of the stream's shape (None: not of that shape)."""
        if not (raw.startswith(self._head) and raw.endswith(self._tail)):
            return None
        start, end = self._ends
        if self._after:  # a counter, then more of the head
            number = _NUMBER.match(raw, start)
            if number is None or not raw.startswith(self._after, number.end()):
                return None
            start = number.end() + len(self._after)
        if len(raw) + end < start:
            return None
        body = raw[start:end]
        try:
            if _NOT_PLAIN.search(body) is None:
                return body.decode()
            if _ESCAPED.fullmatch(body) is not None:  # escapes (a line break, a quote)
                return orjson.loads(b'"' + body + b'"')  # type: ignore[no-any-return]
        except (UnicodeDecodeError, orjson.JSONDecodeError):
            pass  # not UTF-8, a lone surrogate: parsed, and found garbled
        return None

    def _learn(self, event: Event) -> None:
        ((key, text),) = event.texts.items()
        raw, literal = event.raw, orjson.dumps(text)
        at = raw.find(literal)
        if at < 0 or raw.find(literal, at + 1) >= 0 or _PROBE in raw:
            return  # written otherwise (escaped differently), or not only once
        head, tail, after = raw[: at + 1], raw[at + len(literal) - 1 :], b""
        if (counter := _COUNTER.search(head)) is not None:  # it changes from event to event
            head, after = head[: counter.start(1)], head[counter.end(1) :]
        other = b"1" if counter is not None and counter[1] == b"0" else b"0"
        probe = head + (other if counter else b"") + after
        found = parse_event(probe + _PROBE + tail, self.endpoint, self.thinking)
        if not _plain(found) or found.texts != {key: _PROBE.decode()}:
            return
        empty = parse_event(probe + tail, self.endpoint, self.thinking)  # an empty text: none
        if empty.texts or empty.names or empty.finals or empty.terminal or empty.finishing:
            return
        if not self._used:
            self._unused += 1
        self._head, self._after, self._tail = head, after, tail
        self._key, self._name, self._used = key, event.name, False
        self._ends = (len(head), -len(tail))


def _plain(event: Event) -> bool:
    """One text delta and nothing else a guard or a watcher notes."""
    return (
        len(event.texts) == 1
        and not (event.names or event.finals or event.terminal or event.finishing)
        and event.data is not None
        and usage_of(event) is None
    )


def choice_of(key: Key) -> int:
    return key if isinstance(key, int) else key[0]


def _index(value: Any) -> int:
    return value if type(value) is int else 0


def parse_event(raw: bytes, endpoint: str, thinking: bool = False) -> Event:
    """`thinking`: reasoning (Messages thinking deltas, Chat reasoning deltas, Responses
    reasoning events) is guardable text too."""
    name, payload = _fields(raw)
    event = Event(raw, name)
    if _hides_lines(raw):
        event.garbled = True
        return event
    if payload is None:
        return event
    if payload[:1] != b"{":  # a client's JSON parser skips leading whitespace: so do we
        payload = payload.lstrip(b" \t\r\n")
        if payload[:1] != b"{":
            if payload.rstrip() == b"[DONE]":
                event.done = event.terminal = True
            else:  # no object, hence no text the guard reads: never sent on
                event.garbled = bool(payload)
            return event
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        event.garbled = True
        return event
    if type(data) is dict:
        event._data = data
        if endpoint == RESPONSES:
            _responses(data, event, thinking)
        elif endpoint == MESSAGES:  # with or without its event: line
            anthropic_sse.read(data, event, thinking)
        elif not _plain_delta(data, event):
            _choices(data, event, endpoint == COMPLETIONS, thinking)
            event.terminal = "error" in data
    return event


# Line breaks of str.splitlines() that SSE does not know (VT, FF, FS-RS, NEL, LS, PS):
# a client that splits lines at them would read a `data:` line hidden in an `event:`
# line or a comment, which the gateway never reads; inside data they only break the JSON.
_ODD_BREAKS = re.compile(rb"[\x0b\x0c\x1c-\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")


def _hides_lines(raw: bytes) -> bool:
    """A line besides the data lines holds a line break some clients split at."""
    if raw[:6] == b"data: " and raw.find(b"\n") == len(raw) - 2:  # the bulk: one data line
        return False
    if _ODD_BREAKS.search(raw) is None:
        return False
    return any(
        _ODD_BREAKS.search(line) for line in raw.splitlines() if not line.startswith(b"data:")
    )


def _fields(raw: bytes) -> tuple[str | None, bytes | None]:
    """An event's name (its `event:` field) and data (its `data:` lines joined; None
    when it has none)."""
    first, whole = raw.find(b"\n"), raw.endswith(b"\n\n")
    if first == len(raw) - 2 and whole and raw[:6] == b"data: ":  # the bulk: one data line
        return None, raw[6:-2]
    if raw[:7] == b"event: " and whole and b"\r" not in raw:  # `event:`, then `data:`
        second = raw.find(b"\n", first + 1)
        if second == len(raw) - 2 and raw[first + 1 : first + 7] == b"data: ":
            return raw[7:first].strip().decode("utf-8", "replace"), raw[first + 7 : -2]
    name, lines = None, []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            lines.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(lines) if lines else None


def _plain_delta(data: dict[str, Any], event: Event) -> bool:
    """The bulk of a chat stream, one choice's content delta and nothing else: read it
    without the general walk (False: not that shape, walk it)."""
    choices = data.get("choices")
    if type(choices) is not list or len(choices) != 1 or "error" in data:
        return False
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason"):
        return False
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) != 1:
        return False
    text = delta.get("content")
    if type(text) is not str:
        return False
    if text:
        i = choice.get("index")
        event.texts = {i if type(i) is int else 0: text}
    return True


def _choices(data: dict[str, Any], event: Event, completions: bool, thinking: bool = False) -> None:
    """Chat Completions and Completions chunks: every choice's text, tool calls, refusal."""
    choices = data.get("choices")
    if not choices or type(choices) is not list:
        return
    texts: dict[Key, str] = {}
    for choice in choices:
        if type(choice) is not dict:
            continue
        i = choice.get("index")
        if type(i) is not int:
            i = 0
        if choice.get("finish_reason"):
            event.finishing = True
        if completions:
            text = choice.get("text")
            if text and type(text) is str:
                texts[i] = text
            elif _not_text(text):
                event.garbled = True
            continue
        delta = choice.get("delta")
        if type(delta) is not dict:
            continue
        text = delta.get("content")
        if _not_text(text) or _not_text(delta.get("refusal")):
            event.garbled = True  # parts or numbers where a delta has text: no API sends it
        if text and type(text) is str:
            texts[i] = text
        if len(delta) == 1 and text is not None:
            continue  # a plain content delta: nothing else to look at
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            texts[(i, "refusal", 0)] = refusal
        audio = delta.get("audio")
        if isinstance(audio, dict) and audio.get("transcript") and type(audio["transcript"]) is str:
            texts[(i, "audio", 0)] = audio["transcript"]
        if thinking and (reasoning := _reasoning(delta)):
            texts[(i, "reasoning", 0)] = reasoning
        call = delta.get("function_call")
        if isinstance(call, dict):
            _call_piece(event, (i, "function", 0), call, texts)
        for tool in delta.get("tool_calls") or ():
            kind = call_kind(tool)
            if kind is not None:
                _call_piece(event, (i, "tool", _index(tool.get("index"))), tool[kind], texts)
    if texts:
        event.texts = texts


def _not_text(value: Any) -> bool:
    """Something other than text where a stream sends text (a client shows it anyway)."""
    return value is not None and type(value) is not str


def _reasoning(delta: dict[str, Any]) -> str:
    """A chat delta's reasoning text: `reasoning_content`, `reasoning` and the text of
    OpenRouter's `reasoning_details` (servers that send several send the same text)."""
    found = [t for k in _CHAT_REASONING if (t := delta.get(k)) and isinstance(t, str)]
    if details := "".join(text for _, _, text in _details(delta)):
        found.append(details)
    return found[0] if len(set(found)) == 1 else "".join(found)


def _details(delta: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """The text parts of a delta's `reasoning_details`: (part, its text field, text)."""
    details = delta.get("reasoning_details")
    return [
        (part, key, part[key])
        for part in (details if isinstance(details, list) else ())
        if isinstance(part, dict)
        for key in ("text", "summary")
        if isinstance(part.get(key), str) and part[key]
    ]


def _call_piece(event: Event, key: Key, function: dict[str, Any], texts: dict[Key, str]) -> None:
    if isinstance(function.get("name"), str) and function["name"]:
        event.names = {**event.names, key: function["name"]}
    arguments = function.get("arguments", function.get("input"))
    if arguments and isinstance(arguments, str):
        texts[key] = arguments


def _responses(data: dict[str, Any], event: Event, thinking: bool = False) -> None:
    kind = data.get("type")
    event.terminal = kind in RESPONSES_TERMINAL or event.name == "error"
    event.finishing = kind == "response.completed"
    i = _index(data.get("output_index"))
    if _not_text(data.get("delta")):
        event.garbled = True  # a delta is text in every Responses event that has one
    if kind in _RESPONSES_DELTAS:
        if isinstance(data.get("delta"), str) and data["delta"]:
            event.texts = {i: data["delta"]}
    elif kind == "response.refusal.delta":
        if isinstance(data.get("delta"), str) and data["delta"]:
            event.texts = {(i, "refusal", 0): data["delta"]}
    elif kind in _RESPONSES_DONE:
        text = data.get(_RESPONSES_DONE[kind])
        if isinstance(text, str):
            event.finals = {i: text}
    elif kind == "response.refusal.done" and isinstance(data.get("refusal"), str):
        event.finals = {(i, "refusal", 0): data["refusal"]}
    elif kind in ("response.content_part.added", "response.content_part.done"):
        if isinstance(data.get("part"), dict):  # restates the part's text
            _item_finals({"content": [data["part"]]}, i, event)
    elif kind in ("response.output_item.added", "response.output_item.done"):
        if isinstance(data.get("item"), dict):
            _item_finals(data["item"], i, event, thinking)
    elif kind in RESPONSES_TERMINAL and isinstance(data.get("response"), dict):
        for j, item in enumerate(data["response"].get("output") or ()):
            if isinstance(item, dict):
                _item_finals(item, j, event, thinking)
    elif kind == "response.shell_call_command.delta":
        if isinstance(data.get("delta"), str) and data["delta"]:
            event.texts = {(i, "commands", _index(data.get("command_index"))): data["delta"]}
    elif kind in _SHELL_COMMAND and isinstance(data.get("command"), str):
        event.finals = {(i, "commands", _index(data.get("command_index"))): data["command"]}
    elif thinking and kind in _REASONING_DELTAS:
        if isinstance(data.get("delta"), str) and data["delta"]:
            channel, at = _REASONING_DELTAS[kind]
            event.texts = {(i, channel, _index(data.get(at))): data["delta"]}
    elif thinking and kind in _REASONING_DONE and isinstance(data.get("text"), str):
        channel, at = _REASONING_DONE[kind]
        event.finals = {(i, channel, _index(data.get(at))): data["text"]}
    elif thinking and kind == "response.reasoning_summary_part.done":
        part = data.get("part")
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            event.finals = {(i, "summary", _index(data.get("summary_index"))): part["text"]}


def _item_paths(item: dict[str, Any], thinking: bool) -> list[tuple[Channel, tuple[Any, ...]]]:
    """Where a Responses output item other than a message keeps text: (its channel, or
    None for the item's own index, and its path inside the item)."""
    kind = item.get("type")
    paths: list[tuple[Channel, tuple[Any, ...]]] = []
    if kind in _CALL_TEXT:
        paths.append((None, (_CALL_TEXT[kind],)))
    if kind == "mcp_call":
        paths.append((("output", 0), ("output",)))
    elif kind == "code_interpreter_call":
        for j, output in enumerate(item.get("outputs") or ()):
            if isinstance(output, dict):
                paths.append((("logs", j), ("outputs", j, "logs")))
    elif kind == "web_search_call" and isinstance(item.get("action"), dict):
        action = item["action"]
        paths += [((f, 0), ("action", f)) for f in ("query", "pattern")]
        for j, _ in enumerate(action.get("queries") or ()):
            paths.append((("queries", j), ("action", "queries", j)))
    elif kind == "file_search_call" and isinstance(item.get("queries"), list):
        paths += [(("queries", j), ("queries", j)) for j in range(len(item["queries"]))]
    elif kind == "mcp_approval_request":  # the call the user is asked to approve
        paths.append((("arguments", 0), ("arguments",)))
    elif kind == "computer_call":  # text the computer types
        paths.append((("text", 0), ("action", "text")))
    elif kind in ("local_shell_call", "shell_call") and isinstance(item.get("action"), dict):
        field = "command" if kind == "local_shell_call" else "commands"
        commands = item["action"].get(field)
        for j, _ in enumerate(commands if isinstance(commands, list) else ()):
            paths.append((("commands", j), ("action", field, j)))
    elif kind == "reasoning" and thinking:
        for field, channel in (("summary", "summary"), ("content", "reasoning")):
            for j, _ in enumerate(item.get(field) or ()):
                paths.append(((channel, j), (field, j, "text")))
    return paths


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def _item_finals(item: dict[str, Any], i: int, event: Event, thinking: bool = False) -> None:
    kind = item.get("type")
    if kind in _TOOL_ITEMS:
        if kind in _CALL_TEXT and isinstance(item.get("name"), str):
            event.names = {**event.names, i: item["name"]}
        finals: dict[Key, str] = {}
        for channel, path in _item_paths(item, thinking):
            text = _at(item, path)
            if isinstance(text, str):
                finals[i if channel is None else (i, *channel)] = text
        if finals:
            event.finals = {**event.finals, **finals}
        return
    texts, refusals = [], []
    for part in item.get("content") or ():
        if isinstance(part, dict):
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                refusals.append(part["refusal"])
    if texts:
        event.finals = {**event.finals, i: "".join(texts)}
    if refusals:
        event.finals = {**event.finals, (i, "refusal", 0): "".join(refusals)}


def serialize(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _copy(event: Event) -> dict[str, Any]:
    assert event.data is not None
    return orjson.loads(orjson.dumps(event.data))  # deep copy; the original stays intact


def with_texts(event: Event, endpoint: str, texts: dict[Key, str]) -> bytes:
    """The event re-serialized with its text deltas replaced."""
    data = _copy(event)
    if endpoint == MESSAGES:
        anthropic_sse.with_texts(data, texts)
        return serialize(data, event.name)
    if endpoint == RESPONSES:
        key = next(iter(event.texts), 0)
        data["delta"] = texts.get(key, "")
        if data.get("logprobs"):  # their tokens would spell out the text replaced
            data["logprobs"] = []
        return serialize(data, event.name)
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("logprobs") is not None:  # their tokens would spell out the text replaced
            choice["logprobs"] = None
        i = _index(choice.get("index"))
        if endpoint == COMPLETIONS:
            if i in texts:
                choice["text"] = texts[i]
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        if i in texts:
            delta["content"] = texts[i]
        if (i, "refusal", 0) in texts:
            delta["refusal"] = texts[(i, "refusal", 0)]
        if (i, "audio", 0) in texts and isinstance(delta.get("audio"), dict):
            delta["audio"]["transcript"] = texts[(i, "audio", 0)]
        if (i, "reasoning", 0) in texts:
            _set_reasoning(delta, texts[(i, "reasoning", 0)])
        if (i, "function", 0) in texts:
            delta["function_call"]["arguments"] = texts[(i, "function", 0)]
        for tool in delta.get("tool_calls") or ():
            key = (i, "tool", _index(tool.get("index")))
            if key in texts and (kind := call_kind(tool)) is not None:
                tool[kind]["arguments" if kind == "function" else "input"] = texts[key]
    return serialize(data, event.name)


def _set_reasoning(delta: dict[str, Any], text: str) -> None:
    """A chat delta's reasoning rewritten: each field that carried the same text gets the
    new text; where they differed, the first carries it all (see `_reasoning`)."""
    found = [k for k in _CHAT_REASONING if delta.get(k) and isinstance(delta[k], str)]
    parts = _details(delta)
    texts = [delta[k] for k in found] + (["".join(t for _, _, t in parts)] if parts else [])
    same = len(set(texts)) == 1
    for n, key in enumerate(found):
        delta[key] = text if same or n == 0 else ""
    for n, (part, key, _) in enumerate(parts):
        part[key] = text if n == 0 and (same or not found) else ""


def with_final_text(event: Event, texts: dict[Key, str]) -> bytes:
    """A Responses API `*.done`/`response.completed` event restated with the released text."""
    return serialize(restated(event, texts), event.name)


def restated(event: Event, texts: dict[Key, str]) -> dict[str, Any]:
    """The data of a Responses API `*.done`/`response.completed` event, restating `texts`."""
    data = _copy(event)

    def fix_item(item: dict[str, Any], i: int) -> None:
        if item.get("type") in _TOOL_ITEMS:
            for channel, path in _item_paths(item, True):
                key = i if channel is None else (i, *channel)
                if key in texts and isinstance(_at(item, path), str):
                    _at(item, path[:-1])[path[-1]] = texts[key]  # type: ignore[index]
            return
        for part in item.get("content") or ():
            if part.get("type") == "output_text" and i in texts:
                part["text"] = texts[i]
                if part.get("logprobs"):
                    part["logprobs"] = []
            elif part.get("type") == "refusal" and (i, "refusal", 0) in texts:
                part["refusal"] = texts[(i, "refusal", 0)]

    i = _index(data.get("output_index"))
    kind = data.get("type")
    if kind in _RESPONSES_DONE and i in texts:
        data[_RESPONSES_DONE[kind]] = texts[i]
        if data.get("logprobs"):
            data["logprobs"] = []
    elif kind in _REASONING_DONE or kind == "response.reasoning_summary_part.done":
        channel, at = _REASONING_DONE.get(kind, ("summary", "summary_index"))
        key = (i, channel, _index(data.get(at)))
        if key in texts and kind in _REASONING_DONE:
            data["text"] = texts[key]
        elif key in texts and isinstance(data.get("part"), dict):
            data["part"]["text"] = texts[key]
    elif kind in _SHELL_COMMAND:
        key = (i, "commands", _index(data.get("command_index")))
        if key in texts:
            data["command"] = texts[key]
    elif kind == "response.refusal.done" and (i, "refusal", 0) in texts:
        data["refusal"] = texts[(i, "refusal", 0)]
    elif kind in ("response.content_part.added", "response.content_part.done"):
        if isinstance(data.get("part"), dict):
            fix_item({"content": [data["part"]]}, i)
    elif kind in ("response.output_item.added", "response.output_item.done"):
        if isinstance(data.get("item"), dict):
            fix_item(data["item"], i)
    elif kind in RESPONSES_TERMINAL and isinstance(data.get("response"), dict):
        for j, item in enumerate(data["response"].get("output") or ()):
            if isinstance(item, dict):
                fix_item(item, j)
    return data


def usage_of(event: Event) -> dict[str, Any] | None:
    """Token usage carried by an event (chat/completions usage chunk, response.completed)."""
    if event.data is None:
        return None
    usage = event.data.get("usage")
    if usage is None and isinstance(event.data.get("response"), dict):
        usage = event.data["response"].get("usage")
    return usage if isinstance(usage, dict) else None
