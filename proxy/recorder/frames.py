"""The data pipe's format: frames of audit records and of spans (pure functions).

A frame is a kind byte, a 4-byte big-endian length and the payload: b"a" audit records as
an orjson array, b"s" spans as a marshalled list of `span_fields` tuples. marshal is safe
here: both ends are this program, and the pipe is private to them.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def records_frame(records: list[Any]) -> bytes:
    return frame(b"a", orjson.dumps(records, default=str, option=orjson.OPT_NON_STR_KEYS))


def span_fields(span: Any) -> tuple[Any, ...]:
    return (
        span.name, span.kind, span.trace_id, span.span_id, span.parent_id, span.parent_remote,
        span.trace_state, span.start_ns, span.end_ns, span.attributes, span.events,
        span.status_code, span.status_message,
    )  # fmt: skip


def spans_frame(spans: list[Any]) -> bytes:
    return frame(b"s", marshal.dumps([span_fields(s) for s in spans]))


class ReceivedSpan:
    """A span rebuilt from `span_fields` in the recorder: what proxy.otlp reads."""

    __slots__ = (
        "attributes", "end_ns", "events", "kind", "name", "parent_id", "parent_remote",
        "span_id", "start_ns", "status_code", "status_message", "trace_id", "trace_state",
    )  # fmt: skip

    def __init__(self, fields: tuple[Any, ...]) -> None:
        (
            self.name, self.kind, self.trace_id, self.span_id, self.parent_id,
            self.parent_remote, self.trace_state, self.start_ns, self.end_ns, self.attributes,
            self.events, self.status_code, self.status_message,
        ) = fields  # fmt: skip


def read_frames(buffer: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Complete frames (kind, payload) at the start of `buffer`, and the incomplete rest."""
    frames, at = [], 0
    while len(buffer) - at >= HEADER.size:
        kind, size = HEADER.unpack_from(buffer, at)
        end = at + HEADER.size + size
        if end > len(buffer):
            break
        frames.append((kind, buffer[at + HEADER.size : end]))
        at = end
    return frames, buffer[at:]
