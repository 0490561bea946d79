"""The data pipe's format: frames of audit records and of spans (pure functions).

A frame is a kind byte, a 4-byte big-endian length and the payload: b"a" audit records as
a marshalled list of store rows (`proxy.audit.stored_row`), b"s" spans as a marshalled list
of `Span.fields()` tuples. marshal is safe here: both ends are this program, and the pipe
is private to them.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Iterator
from typing import IO, Any

HEADER = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def rows_frame(rows: list[Any]) -> bytes:
    return frame(b"a", marshal.dumps(rows))


def spans_frame(spans: list[Any]) -> bytes:
    return frame(b"s", marshal.dumps([s.fields() for s in spans]))


def iter_frames(stream: IO[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Frames (kind, payload) from a blocking buffered stream until it ends; a frame cut
    short by the end is dropped. Each payload is read whole into its own buffer: no
    re-joining of a growing remainder, however the pipe splits the writes."""
    while len(header := stream.read(HEADER.size)) == HEADER.size:
        kind, size = HEADER.unpack(header)
        payload = stream.read(size)
        if len(payload) < size:
            return
        yield kind, payload
