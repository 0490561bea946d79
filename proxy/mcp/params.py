"""MCP 2026-07-28's `Mcp-Param-*` headers (SEP-2243): a client mirrors the tool arguments
a tool's schema marks with `x-mcp-header` into request headers, so intermediaries can
route on them; the server checks each against the body.

They carry argument text beside the body the gateway classifies, so only a header whose
value is one of the `tools/call` arguments the gateway classified reaches the server:
matched to that argument before the check, and re-rendered from it after (a redaction
rewrites the header too). Any other `Mcp-Param-*` header (one that matches no argument,
or on another method) is not forwarded: a server that declared it then refuses the call
as a header mismatch, as it would refuse a client that sent it wrong. The routing
headers `Mcp-Method` and `Mcp-Name` are held to the body the same way.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

from proxy.mcp import messages as m

PREFIX = b"mcp-param-"
_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")
_SAFE = re.compile(r"[\x20-\x7E]*")

Path = tuple[str | int, ...]


ROUTING = (b"mcp-method", b"mcp-name")


def matched(headers: Iterable[tuple[bytes, bytes]], message: m.Message) -> list[tuple[bytes, Path]]:
    """Each header that mirrors the body with the place it mirrors (a path into the
    message): `Mcp-Method` its method, `Mcp-Name` its params' name or uri, and on a
    `tools/call` each `Mcp-Param-*` one of the arguments. Headers that mirror nothing
    are left out."""
    body = message.body
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    kept: list[tuple[bytes, Path]] = []
    by_value: dict[str, Path] | None = None
    for name, raw in headers:
        value = None
        if name == b"mcp-method" or name == b"mcp-name":
            value = _decode(raw.decode("latin-1"))
            places: tuple[Path, ...] = (
                (("method",),) if name == b"mcp-method" else (("params", "name"), ("params", "uri"))
            )
            for place in places:
                if value is not None and _scalar(_at(body, place)) == value:
                    kept.append((name, place))
                    break
        elif name.startswith(PREFIX) and message.method == m.TOOLS_CALL:
            if by_value is None:
                arguments = params.get("arguments")
                by_value = {}
                for path, text in _scalars(arguments if isinstance(arguments, dict) else {}, ()):
                    by_value.setdefault(text, ("params", "arguments", *path))
            path = by_value.get(_decode(raw.decode("latin-1")) or "")
            if path is not None:
                kept.append((name, path))
    return kept


def rendered(found: list[tuple[bytes, Path]], message: m.Message) -> list[tuple[bytes, bytes]]:
    """The headers to forward, each rendered from the place it mirrors as it is now
    (redacted or not); one whose value is no longer a scalar is dropped."""
    headers = []
    for name, path in found:
        value = _scalar(_at(message.body, path))
        if value is not None:
            headers.append((name, _encode(value).encode("latin-1")))
    return headers


_MAX_DEPTH = 16


def _scalars(node: Any, path: Path) -> Iterable[tuple[Path, str]]:
    """Every scalar argument (nested too: schemas may mark nested properties), rendered
    as a client mirrors it."""
    if isinstance(node, dict) and len(path) < _MAX_DEPTH:
        for key, value in node.items():
            yield from _scalars(value, (*path, key))
    elif (value := _scalar(node)) is not None:
        yield path, value


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _at(node: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _decode(value: str) -> str | None:
    """A header value as the argument it mirrors: verbatim, or its `=?base64?...?=`
    sentinel decoded (None when the sentinel is malformed)."""
    found = _SENTINEL.fullmatch(value)
    if found is None:
        return value
    try:
        return base64.b64decode(found["payload"], validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII payload
        return None


def _encode(value: str) -> str:
    if _SAFE.fullmatch(value) and value == value.strip() and not _SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode('utf-8')).decode('ascii')}?="
