"""What the route's MCP policies make of each message, both ways.

A message the client POSTs may be answered by the gateway itself (a blocked tool call,
a tool the gateway dropped from the list), forwarded as it came, or forwarded
rewritten (redacted arguments; a flagged answer to the server's own request replaced
by a JSON-RPC error). A message the server sends may pass byte for byte, be replaced
(a withheld result, a tool list without the flagged tools, instructions dropped), or
be withheld altogether (a flagged request to the client, which the server is then told
about): proxy.mcp.outbound. The HTTP side (proxy.mcp.relay) only moves the bytes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.exchange import Exchange
from proxy.gateway import Gateway
from proxy.mcp import messages as m
from proxy.mcp.guarding import McpGuard, note
from proxy.mcp.outbound import Outbound
from proxy.mcp.record import McpCall
from proxy.openai_api import render


class Screen:
    def __init__(
        self,
        gateway: Gateway,
        keep_content: bool,
        answer_server: Callable[[McpCall, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.gw = gateway
        self.guard = McpGuard(gateway.guard)
        self.keep_content = keep_content
        # Tools a tools/list check dropped, per (route, server): calling one by name is
        # refused too (a client may have listed the tools elsewhere).
        self.dropped: dict[tuple[str, str], dict[str, str]] = {}
        self.outbound = Outbound(gateway, self.guard, keep_content, answer_server, self.dropped)

    async def client_message(
        self, ex: Exchange, call: McpCall, message: m.Message, raw: bytes
    ) -> tuple[dict[str, Any] | None, bytes]:
        """What becomes of a message the client POSTs: (the gateway's own answer, when
        the server must not see it; else the body to forward). A blocked request is
        answered here (a tool call as the tool's failure); a blocked answer to the
        server's own request reaches the server as a JSON-RPC error instead."""
        route = ex.route
        assert route is not None
        if message.kind == "request" and message.method == m.TOOLS_CALL:
            why = self.dropped.get((route.name, call.server), {}).get(str(message.tool))
            if why is not None:
                ex.decision = "block"
                result = m.tool_error(
                    f"The gateway dropped tool '{message.tool}' from this server's tool list "
                    f"({why}); it cannot be called."
                )
                return m.result_response(message.id, result, call.version), raw
        if not route.mcp.input.guarded:
            return None, raw
        found = m.input_slots(message)
        if found is None:
            return None, raw
        slots, context = found
        if self.keep_content:
            ex.content["input"] = render(slots, "last_user")
        started = time.perf_counter()
        check = await self.guard.text(route.mcp.input, self.gw.policies, route.fail, slots, context)
        note(ex, check, started, call.tool)
        if check.decision in ("block", "error"):
            if check.decision == "block":
                text = f"flagged by {m.named(check.flagged)}"
                code = m.CONTENT_FILTERED
            else:
                text, code = "the guard is unavailable", m.GUARD_UNAVAILABLE
            if message.kind in ("response", "error"):
                why = f"The gateway withheld the client's answer: {text}."
                return None, orjson.dumps(m.error_response(message.id, code, why))
            if message.kind == "notification":
                return m.ACCEPTED, raw  # not sent; a notification has no answer to refuse
            if message.method == m.TOOLS_CALL and check.decision == "block":
                result = m.blocked_arguments(message.tool, check.flagged)
                return m.result_response(message.id, result, call.version), raw
            why = f"The gateway did not send this {message.method} request: {text}."
            return m.error_response(message.id, code, why), raw
        if check.decision == "redact":
            if self.keep_content:
                ex.content["input_redacted"] = render(slots, "last_user")
            return None, orjson.dumps(message.body)
        # What was classified, not the raw bytes: with a duplicate key, the server might
        # read the copy orjson's last-wins parse did not.
        encoded = orjson.dumps(message.body)
        return None, raw if encoded == raw else encoded

    async def server_message(
        self, ex: Exchange, call: McpCall, data: bytes, expect: m.Message | None
    ) -> bytes:
        """A server's JSON body as the client may see it (proxy.mcp.outbound)."""
        return await self.outbound.body(ex, call, data, expect)

    async def event(
        self, ex: Exchange, call: McpCall, event: bytes, expect: m.Message | None
    ) -> bytes:
        """One SSE event: its `data` lines are one JSON-RPC message; other fields (the
        event id used for resumption) are kept as they are."""
        lines = event.splitlines(keepends=True)
        data = b"\n".join(
            line[5:].removeprefix(b" ").rstrip(b"\r\n")
            for line in lines
            if line.startswith(b"data:")
        )
        if not data.strip():
            return event
        guarded = await self.outbound.body(ex, call, data, expect)
        if guarded is data:
            return event
        if not guarded:
            return b""  # withheld altogether
        kept = b"".join(line for line in lines if line.strip() and not line.startswith(b"data:"))
        return kept + b"data: " + guarded + b"\n\n"
