"""Request bodies as sent: `Content-Encoding` checked, gzip decoded within the body limit,
and JSON keys that appear twice kept from meaning two things.

A compressed body must never reach a classifier or an upstream as if it were text, and a
small compressed body must not become a huge one (a zip bomb): the decoded size counts
against `server.max_body_bytes`, and decoding stops one byte past it.

Duplicate keys: orjson keeps the last of a repeated key, other parsers keep the first. An
upstream that keeps the first would act on text the guard never read, so a guarded
request goes upstream re-encoded from what the guard read (`as_read`: orjson.dumps costs
about a fifth of the parse, where finding duplicates with `json.loads(object_pairs_hook=)`
costs about three parses). A pass-through route forwards the client's bytes; only where the
`model` decides the route (a tenant's `routes` globs) would a repeated `model` reach another
route than the upstream serves, and there a body with `"model"` twice is checked and
refused (400) if any key repeats.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from typing import Any

import orjson

from proxy.openai_api import OpenAIError, bad_request
from proxy.shaping import too_large

IDENTITY = ""
GZIP = "gzip"
_CODINGS = {"": IDENTITY, "identity": IDENTITY, "gzip": GZIP, "x-gzip": GZIP}


def content_coding(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The one coding the body carries (IDENTITY or GZIP); 415 for anything else, stacked
    codings included."""
    codings = [
        c.strip().lower()
        for name, value in headers
        if name.lower() == b"content-encoding"
        for c in value.decode("latin-1").split(",")
    ]
    found = [_CODINGS.get(c) for c in codings if c not in ("", "identity")]
    if not found:
        return IDENTITY
    if len(found) == 1 and found[0] == GZIP:
        return GZIP
    shown = ", ".join(c for c in codings if c not in ("", "identity"))[:100]
    raise OpenAIError(
        415,
        f"Content-Encoding {shown!r} is not supported: send the body uncompressed or gzip.",
        code="unsupported_content_encoding",
    )


def gunzip(raw: bytes, limit: int) -> bytes:
    """The decoded body (every gzip member); 413 past `limit`, 400 when it is not gzip."""
    out: list[bytes] = []
    size = 0
    data = raw
    try:
        while data:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = decoder.decompress(data, limit - size + 1)
            size += len(chunk)
            if size > limit or decoder.unconsumed_tail:
                raise too_large(limit)
            if not decoder.eof:
                raise bad_request("The gzip request body is truncated.", "invalid_body")
            out.append(chunk)
            data = decoder.unused_data
    except zlib.error:
        raise bad_request("The request body is not valid gzip.", "invalid_body") from None
    return b"".join(out)


def as_read(body: dict[str, Any], raw: bytes) -> bytes:
    """The request as the guard read it (duplicate keys resolved as orjson did). A body
    nested deeper than orjson writes (255 levels) goes as sent once it has no duplicate."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        refuse_repeated(raw)
        return raw


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return found


# A key written with a \u escape (`"mod\u0065l"` is `model` to every parser).
_ESCAPED_KEY = re.compile(rb'"(?:[^"\\]|\\.)*?\\u(?:[^"\\]|\\.)*"\s*:')


def refuse_repeated_model(raw: bytes) -> None:
    """400 when a body that may name `model` twice repeats any key (it would be routed by
    its last `model` and served by its first on some upstreams). Free unless `"model"`
    occurs twice in the bytes or a key is written with an escape."""
    if raw.count(b'"model"') >= 2 or (b"\\u" in raw and _ESCAPED_KEY.search(raw)):
        refuse_repeated(raw)


def refuse_repeated(raw: bytes) -> None:
    """400 naming the first key an object of `raw` repeats, at any depth."""
    try:
        json.loads(raw, object_pairs_hook=_unique)
    except _Repeated as repeated:
        raise bad_request(
            f"The request body has the key {repeated.key!r} more than once in one object.",
            "duplicate_key",
            repeated.key,
        ) from None
    except (ValueError, RecursionError):
        raise bad_request(
            "The request body could not be read unambiguously.", "invalid_json"
        ) from None
