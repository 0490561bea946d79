"""What the route's output policies make of everything a server sends the client.

Every message is read, whatever its kind: results, JSON-RPC errors (`message`, `data`),
notifications (log data, progress messages), and the server's own requests (sampling,
elicitation, any other). A JSON-RPC batch is screened message by message; a body that is
not JSON-RPC never reaches the client (a JSON-RPC error takes its place), since the
client's SDK might still read text out of it.

A result is read by the request it answers. One whose request the gateway did not see
(on the GET stream, resumed, or an id the client never sent) is not guessed at from its
shape: every string in it is classified, whatever fields it has, and a flagged one is
withheld as a tool's failure when it carries `content`, else as a JSON-RPC error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.exchange import Exchange
from proxy.gateway import Gateway
from proxy.guard.engine import worse
from proxy.mcp import messages as m
from proxy.mcp.guarding import Check, McpGuard, note
from proxy.mcp.record import McpCall
from proxy.openai_api import Slot, render


class Outbound:
    def __init__(
        self,
        gateway: Gateway,
        guard: McpGuard,
        keep_content: bool,
        answer_server: Callable[[McpCall, dict[str, Any]], Awaitable[None]],
        dropped: dict[tuple[str, str], dict[str, str]],
    ) -> None:
        self.gw = gateway
        self.guard = guard
        self.keep_content = keep_content
        self.answer_server = answer_server  # POSTs the gateway's answer to a server request
        self.dropped = dropped  # tools a tools/list dropped, per (route, server)

    async def body(
        self, ex: Exchange, call: McpCall, data: bytes, expect: m.Message | None
    ) -> bytes:
        """A server's JSON body or one SSE event's data as the client may see it: `data`
        itself (the same object) when it passes unchanged, else its replacement (empty:
        withheld altogether)."""
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError:
            return orjson.dumps(self._unreadable(ex, expect, None))
        if isinstance(decoded, list):
            kept: list[Any] = []
            changed = not decoded
            for item in decoded:
                screened = await self.message(ex, call, item, expect)
                changed = changed or screened is not item
                if screened is not None:
                    kept.append(screened)
            if not changed:
                return _classified(data, decoded)
            return orjson.dumps(kept) if kept else b""
        screened = await self.message(ex, call, decoded, expect)
        if screened is decoded:
            return _classified(data, decoded)
        return b"" if screened is None else orjson.dumps(screened)

    async def message(
        self, ex: Exchange, call: McpCall, raw: Any, expect: m.Message | None
    ) -> dict[str, Any] | None:
        """One decoded message: itself when it passes, a replacement, or None (withheld)."""
        try:
            message = m.validate(raw)
        except m.Invalid:
            return self._unreadable(ex, expect, raw)
        if message.kind == "request":
            return await self._request(ex, call, message)
        if message.kind == "notification":
            slots = _text(message.body.get("params"))
            check = await self._check(ex, "notification", message.method, slots)
            if check.decision in ("block", "error"):
                return None  # a notification has no answer: it is dropped
            return _passed(message.body, check)
        if message.kind == "error":
            return self._error(
                ex, message, await self._check(ex, "error", None, _error_slots(message))
            )
        return await self._response(ex, call, message, expect)

    async def _check(
        self, ex: Exchange, method: str | None, tool: str | None, slots: list[Slot]
    ) -> Check:
        route = ex.route
        assert route is not None
        started = time.perf_counter()
        if self.keep_content and slots:
            _keep(ex, "output", slots)
        check = await self.guard.result(
            route.mcp.output, self.gw.policies, route.fail, method, tool, slots
        )
        note(ex, check, started, tool if method in (m.TOOLS_CALL, None) else None)
        if check.decision == "redact" and self.keep_content:
            _keep(ex, "output_redacted", slots)
        return check

    async def _response(
        self, ex: Exchange, call: McpCall, message: m.Message, expect: m.Message | None
    ) -> dict[str, Any] | None:
        result = message.body["result"]
        known = expect is not None and message.id == expect.id and expect.method is not None
        method = expect.method if known and expect is not None else None
        tool = expect.tool if known and expect is not None else None
        if method is not None and not m.readable(method, result):
            method = None  # not its method's shape: read as a result of unknown request
        if method in m.LISTS:
            return await self._listing(ex, call, message, method)
        if method in (m.INITIALIZE, m.DISCOVER):
            rest = _text(result, "instructions", "protocolVersion", "supportedVersions")
            about = await self._check(ex, "server", None, rest)
            if about.decision == "error" and not any(isinstance(s, m.KeySlot) for s in rest):
                for slot in rest:  # unchecked: the client connects without the text
                    slot.text = ""
            elif about.decision in ("block", "error"):
                return _withheld(message, method, None, about, call.version)
            check = await self._check(ex, method, None, m.result_slots(method, result))
            if check.decision in ("block", "error"):  # it still connects, without them
                del result["instructions"]
            changed = about.decision in ("redact", "error") or check.decision != "allow"
            return dict(message.body) if changed else message.body
        slots = _text(result)
        check = await self._check(ex, method, tool, slots)
        if check.decision in ("block", "error"):
            shaped_as = method or (m.TOOLS_CALL if "content" in result else None)
            return _withheld(message, shaped_as, tool, check, call.version)
        return _passed(message.body, check)

    async def _listing(
        self, ex: Exchange, call: McpCall, message: m.Message, method: str
    ) -> dict[str, Any]:
        """A listing: each flagged item dropped; a flagged field beside the items (text a
        listing should not carry) withholds the whole result."""
        route = ex.route
        assert route is not None
        result = message.body["result"]
        key = m.LISTS[method][0]
        items = list(result.get(key) or [])
        rest = m.string_slots(result, skip=m.PLUMBING | {key})
        started = time.perf_counter()
        check, dropped = await self.guard.items(
            route.mcp.output, self.gw.policies, route.fail, method, items, rest
        )
        note(ex, check, started)
        if len(items) in dropped:
            blocked = Check(check.result, "block" if "flagged" in dropped[len(items)] else "error")
            return _withheld(message, method, None, blocked, call.version)
        names = {i: str(t.get("name")) if isinstance(t, dict) else "" for i, t in enumerate(items)}
        if method == m.TOOLS_LIST:
            call.dropped.update({names[i]: why for i, why in dropped.items()})
            # Listings come in pages: each updates the tools it lists, flagged or cleared.
            known = self.dropped.setdefault((route.name, call.server), {})
            for index, name in names.items():
                if index in dropped:
                    known[name] = dropped[index]
                else:
                    known.pop(name, None)
        if not dropped:
            return _passed(message.body, check)
        result[key] = [item for i, item in enumerate(items) if i not in dropped]
        return dict(message.body)

    async def _request(
        self, ex: Exchange, call: McpCall, message: m.Message
    ) -> dict[str, Any] | None:
        """A server's request to the client (sampling, elicitation, any other): a flagged
        one never reaches the client, and the server is told so."""
        check = await self._check(ex, "request", message.method, _text(message.body.get("params")))
        if check.decision in ("block", "error"):
            if check.decision == "block":
                why, code = f"flagged by {m.named(check.flagged)}", m.CONTENT_FILTERED
            else:
                why, code = "the guard is unavailable", m.GUARD_UNAVAILABLE
            refusal = m.error_response(
                message.id, code, f"The gateway withheld this request: {why}."
            )
            self.gw.in_background(self.answer_server(call, refusal))
            return None
        return _passed(message.body, check)

    def _error(self, ex: Exchange, message: m.Message, check: Check) -> dict[str, Any]:
        """A server's JSON-RPC error: flagged, its code stays and its text is replaced."""
        if check.decision not in ("block", "error"):
            return _passed(message.body, check)
        code = message.body["error"].get("code")
        if check.decision == "block":
            text = f"flagged by {m.named(check.flagged)}"
            data: dict[str, Any] | None = {"policies": check.flagged}
        else:
            text, data = "the guard is unavailable", None
        return m.error_response(
            message.id, code, f"The gateway withheld the server's error message: {text}.", data
        )

    def _unreadable(self, ex: Exchange, expect: m.Message | None, raw: Any) -> dict[str, Any]:
        """What the client gets for a server message that is not JSON-RPC."""
        ex.decision = worse(ex.decision, "error")
        rpc_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(rpc_id, (str, int)) or isinstance(rpc_id, bool):
            rpc_id = expect.id if expect is not None else None
        return m.error_response(
            rpc_id,
            m.UNREADABLE_RESULT,
            "The MCP server sent a message that is not valid JSON-RPC; the gateway withheld it.",
        )


def _text(holder: Any, *besides: str) -> list[Slot]:
    """Every string a message part carries, plumbing (cursors) and the top-level
    keys `besides` aside."""
    return m.string_slots(holder, skip=m.PLUMBING.union(besides) if besides else m.PLUMBING)


def _error_slots(message: m.Message) -> list[Slot]:
    """An error's message and data (its code is a number)."""
    return m.string_slots(message.body["error"], skip=m.PLUMBING)


def _passed(body: dict[str, Any], check: Check) -> dict[str, Any]:
    """The message as checked: a new object when a redaction rewrote it (re-encoded)."""
    return dict(body) if check.decision == "redact" else body


def _keep(ex: Exchange, key: str, slots: list[Slot]) -> None:
    """The text for the audit record: a stream's messages after one another."""
    text = render(slots, "last_user")
    ex.content[key] = f"{ex.content[key]}\n\n{text}" if ex.content.get(key) else text


def _withheld(
    message: m.Message, method: str | None, tool: str | None, check: Check, version: str | None
) -> dict[str, Any]:
    """What the client gets instead of a flagged (or, failing closed, unchecked) result: a
    tool's failure for tools/call, a JSON-RPC error for the other methods."""
    what = f"{method} result" if method else "result"
    if check.decision == "error":
        text = f"The gateway could not check this {what} (guard unavailable)."
        if method == m.TOOLS_CALL:
            return m.result_response(message.id, m.tool_error(text + " It was withheld."), version)
        return m.error_response(message.id, m.GUARD_UNAVAILABLE, text)
    if method == m.TOOLS_CALL:
        return m.result_response(message.id, m.withheld_result(tool, check.flagged), version)
    return m.error_response(
        message.id,
        m.CONTENT_FILTERED,
        f"The gateway withheld this {what}: flagged by {m.named(check.flagged)}.",
        {"policies": check.flagged},
    )


def _classified(data: bytes, decoded: Any) -> bytes:
    """A passing body as it was classified: `data` itself when it re-encodes the same,
    else the re-encoding (a duplicate key: a first-wins client must not read the copy
    orjson's last-wins parse dropped)."""
    encoded = orjson.dumps(decoded)
    return data if encoded == data else encoded
