"""OTLP/protobuf encoding of finished spans, written straight to the wire format.

The SDK's encoder builds a protobuf object per span, attribute and value (~37 us a span);
this writes the same bytes with a few joins (a few us a span), because every request
of a traced gateway pays for it. Only what the gateway records is supported: string,
bool, int, float and sequence attribute values. `tests/test_otlp.py` decodes the output
with the official protobuf classes and compares it with the SDK's encoding.

Field numbers are those of opentelemetry/proto/trace/v1/trace.proto and
common/v1/common.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

_FIXED64 = struct.Struct("<Q")
_BYTE = [bytes((i,)) for i in range(0x80)]
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8), fixed64 each
_KIND = [b"\x30" + bytes((kind,)) for kind in range(6)]  # field 6, SpanKind
_CODE = [b"", b"\x18\x01", b"\x18\x02"]  # Status.code (field 3): unset, ok, error
_STATUS = [b"\x7a" + bytes((len(code),)) + code for code in _CODE]  # field 15, no message
_DOUBLE = struct.Struct("<d")
# SpanFlags: the parent's is-remote bit is known (0x100), and set (0x200).
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)


def _tag(number: int) -> bytes:
    value, out = number << 3 | 2, bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAG = [_tag(n) for n in range(17)]  # length-delimited fields 0-16


# A finished span as the encoder takes it (proxy.spans.Span.fields() makes one):
# (name, kind, trace_id, span_id, parent_id (0: a root), parent_remote, trace_state,
#  start_ns, end_ns, attributes, events [(name, time_ns, attributes)], status_code,
#  status_message). A plain tuple, so spans cross to the recorder process as they are.
SpanFields = tuple[
    str, int, int, int, int, bool, str, int, int,
    Mapping[str, Any], Sequence[tuple[str, int, Mapping[str, Any]]], int, "str | None",
]  # fmt: skip


def varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _BYTE[value]
    if value < 0:
        value += 1 << 64  # int64: two's complement in ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and sub-messages."""
    size = len(payload)
    return _TAG[number] + (_BYTE[size] if size < 0x80 else varint(size)) + payload


def any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return b"\x18" + varint(value)
        return field(1, str(value).encode())  # beyond int64: as text, not wrapped
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return field(7, value)
    if isinstance(value, Sequence):
        return field(5, b"".join(field(1, any_value(v)) for v in value))
    return field(1, str(value).encode())


def key_value(number: int, key: str, value: Any) -> bytes:
    """Attribute `key: value` as field `number` of its message."""
    return field(number, _key(key) + field(2, any_value(value)))


@lru_cache(maxsize=1024)
def _key(key: str) -> bytes:
    return field(1, key.encode())


# Most attributes repeat request after request (method, route, model, status, tokens,
# finish reasons...), so an attribute's bytes are remembered by its (key, value) item. One
# cache per field number and value type, since 1 == 1.0 == True would share an entry: ints,
# floats, bools, texts up to 64 chars and tuples of a few texts. A full cache is cleared, not
# evicted entry by entry. Values new every request (ids, long texts) are never kept.
_CACHE_MAX = 4096
_UNIQUE = frozenset({"gen_ai.response.id"})  # new every request: keeping it only fills up
_caches: dict[int, dict[type, dict[tuple[str, Any], bytes]]] = {}


def _new_caches(number: int) -> dict[type, dict[tuple[str, Any], bytes]]:
    return _caches.setdefault(number, {str: {}, int: {}, float: {}, bool: {}, tuple: {}})


def attributes(number: int, attrs: Mapping[str, Any]) -> bytes:
    by_type = _caches.get(number) or _new_caches(number)
    parts = []
    for item in attrs.items():
        cache = by_type.get(type(item[1]))
        try:
            encoded = None if cache is None else cache.get(item)
        except TypeError:  # a tuple holding something unhashable
            cache = encoded = None
        if encoded is None:
            encoded = key_value(number, *item)
            if cache is not None and _keepable(*item):
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[item] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _keepable(key: str, value: Any) -> bool:
    if type(value) is str:
        return len(value) <= 64 and key not in _UNIQUE
    if type(value) is tuple:  # only tuples of texts: (1,) == (1.0,) == (True,)
        return len(value) <= 8 and all(type(v) is str for v in value)
    return True


def span(fields: SpanFields) -> bytes:
    (
        name, kind, trace_id, span_id, parent_id, parent_remote, trace_state,
        start_ns, end_ns, attrs, events, status_code, status_message,
    ) = fields  # fmt: skip
    parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
    if trace_state:
        parts.append(field(3, trace_state.encode()))
    if parent_id:
        parts += (b"\x22\x08", parent_id.to_bytes(8, "big"))
    parts += (
        _name(name),
        _KIND[kind],
        _TIMES.pack(0x39, start_ns, 0x41, end_ns),
        attributes(9, attrs),
    )
    for event_name, time_ns, event_attrs in events:
        event = (
            b"\x09" + _FIXED64.pack(time_ns) + field(2, event_name.encode())
            + attributes(3, event_attrs)
        )  # fmt: skip
        parts.append(field(11, event))
    if status_message:
        parts.append(field(15, field(2, status_message.encode()) + _CODE[status_code]))
    else:
        parts.append(_STATUS[status_code])
    parts.append(_FLAGS_REMOTE if parent_remote else _FLAGS_LOCAL)
    return b"".join(parts)


@lru_cache(maxsize=1024)
def _name(name: str) -> bytes:
    return field(5, name.encode())


def resource_header(resource: Mapping[str, Any], scope_name: str) -> tuple[bytes, bytes]:
    """The part of every request before the spans: the Resource and the scope's header."""
    return field(1, attributes(1, resource)), field(1, field(1, scope_name.encode()))


def span_entries(spans: Iterable[SpanFields]) -> bytes:
    """Spans as ScopeSpans.spans entries: chunks of these concatenate into one request."""
    return b"".join([field(2, span(s)) for s in spans])


def export_request(header: tuple[bytes, bytes], entries: bytes, schema_url: str = "") -> bytes:
    """ExportTraceServiceRequest bytes: one ResourceSpans holding one ScopeSpans."""
    resource, scope = header
    resource_spans = resource + field(2, scope + entries)
    if schema_url:
        resource_spans += field(3, schema_url.encode())
    return field(1, resource_spans)
