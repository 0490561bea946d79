"""Request bodies as sent: `Content-Encoding` checked, gzip decoded within the body limit.

A compressed body must never reach a classifier or an upstream as if it were text, and a
small compressed body must not become a huge one (a zip bomb): the decoded size counts
against `server.max_body_bytes`, and decoding stops one byte past it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

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
