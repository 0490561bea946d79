"""Guardable text as immutable values: where it sits in a body (a path) and what it says.

Extraction is pure: a surface reads a parsed body into `Piece`s (one message, tool
definition, field or tool call each), every `Slot` naming the path of one string. Redaction
returns edits (path -> new text) and `rewrite` builds a new body from them; the client's
parsed body is never mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from proxy.openai_api import OpenAIError, bad_request

Path = tuple[str | int, ...]
Edits = Mapping[Path, str]
NO_EDITS: Edits = {}


# NamedTuples: immutable like frozen dataclasses, and several times cheaper to build (a
# request builds a few of each on the guarded hot path).
class Slot(NamedTuple):
    """One string in a body: its path and its text as the client (or model) sent it."""

    path: Path
    text: str


class Piece(NamedTuple):
    """A unit of guardable text: classified on its own under `scope: per_message`.

    `role` is the turn's role (or `tools` for tool definitions); `choice` and `tool` say
    which output choice / item and which tool call it came from.
    """

    role: str
    slots: tuple[Slot, ...]
    tool: str | None = None
    choice: int | None = None

    def text(self, edits: Edits = NO_EDITS) -> str:
        if edits:
            return "\n".join(t for s in self.slots if (t := edits.get(s.path, s.text)))
        if len(self.slots) == 1:
            return self.slots[0].text
        return "\n".join(s.text for s in self.slots if s.text)


def render(pieces: Sequence[Piece], labelled: bool, edits: Edits = NO_EDITS) -> str:
    """The text handed to the classifier: plain, or role-labelled for a conversation."""
    if labelled:
        if len(pieces) == 1 and len(pieces[0].slots) == 1 and not edits:  # type: ignore[arg-type]
            piece = pieces[0]  # type: ignore[index]
            return f"[{piece.role}] {piece.slots[0].text}" if piece.slots[0].text else ""
        return "\n\n".join(
            f"[{p.role}] {t}" for p in pieces for s in p.slots if (t := edits.get(s.path, s.text))
        )
    return "\n".join(t for p in pieces if (t := p.text(edits)))


def param(path: Path) -> str:
    """`messages[2].content` from ("messages", 2, "content")."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def wrong_type(path: Path, value: Any, wanted: str) -> OpenAIError:
    got = "null" if value is None else type(value).__name__
    got = {"str": "string", "dict": "object", "list": "array", "int": "number"}.get(got, got)
    return bad_request(
        f"Invalid type for '{param(path)}': expected {wanted}, but got {got}.",
        "invalid_type",
        param(path),
    )


def as_list(body: Mapping[str, Any], key: str, *, required: bool = False) -> list[Any]:
    value = body.get(key)
    if isinstance(value, list):
        return value
    if value is None and not required:
        return []
    raise wrong_type((key,), value, "an array")


def as_object(value: Any, path: Path) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise wrong_type(path, value, "an object")


def texts(
    node: Any,
    path: Path,
    keys: frozenset[str] | None,
    strict: bool = True,
    read: Callable[[dict[str, Any], Path], list[Slot] | None] | None = None,
) -> list[Slot]:
    """Every string in `node`, in document order, descending through lists and through
    objects' members (only those under `keys`, unless None). `read` may take an object
    whole (its slots), else None to descend into it. A number or boolean where text
    belongs is a 400 (`strict`) or skipped. Iterative: nesting depth cannot overflow."""
    out: list[Slot] = []
    stack: list[tuple[Any, Path]] = [(node, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            out.append(Slot(where, value))
            continue
        if isinstance(value, dict):
            if read is not None and (found := read(value, where)) is not None:
                out += found
                continue
            items = value.items()
            children = [(v, (*where, k)) for k, v in items if keys is None or k in keys]
        elif isinstance(value, list):
            children = [(v, (*where, i)) for i, v in enumerate(value)]
        elif value is None or not strict:
            continue
        else:
            raise wrong_type(where, value, "a string, an array or an object")
        stack.extend(reversed(children))
    return out


def leaves(value: Any, path: Path) -> list[Slot]:
    """Every string inside a JSON value (a tool call's input), in document order."""
    return texts(value, path, None, strict=False)


DESCRIPTIONS = frozenset(("description", "server_description"))  # an MCP tool's server's


def descriptions(node: Any, path: Path) -> list[Slot]:
    """Every `description` string anywhere in a tool definition (its JSON Schema too)."""
    out: list[Slot] = []
    stack: list[tuple[Any, Path]] = [(node, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            children = []
            for k, v in value.items():
                if k in DESCRIPTIONS and isinstance(v, str):
                    out.append(Slot((*where, k), v))
                elif isinstance(v, (dict, list)):
                    children.append((v, (*where, k)))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(v, (*where, i)) for i, v in enumerate(value)]))
    return out


def rewrite(body: dict[str, Any], edits: Edits) -> dict[str, Any]:
    """A new body with each edited path's string replaced; containers on an edited path
    are copied, everything else is shared with `body` (which is left as it was)."""
    if not edits:
        return body
    root = dict(body)
    copied: dict[Path, Any] = {(): root}
    for path, text in edits.items():
        node = root
        for depth, key in enumerate(path[:-1], 1):
            prefix = path[:depth]
            child = copied.get(prefix)
            if child is None:
                original = node[key]
                child = dict(original) if isinstance(original, dict) else list(original)
                node[key] = child
                copied[prefix] = child
            node = child
        node[path[-1]] = text
    return root


def tool_defs(tools: list[Any], key: str) -> list[Piece]:
    """One piece per tool definition: its descriptions (parameters' included)."""
    pieces = []
    for index, tool in enumerate(tools):
        slots = descriptions(as_object(tool, (key, index)), (key, index))
        if slots:
            pieces.append(Piece("tools", tuple(slots)))
    return pieces
