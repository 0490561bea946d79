"""What the route's MCP policies make of each message, both ways.

A message the client POSTs may be answered by the gateway itself (a blocked tool call,
a tool the gateway dropped from the list), forwarded as it came, or forwarded
rewritten (redacted arguments; a flagged answer to the server's own request replaced
by a JSON-RPC error). A message the server sends may pass byte for byte, be replaced
(a withheld result, a tool list without the flagged tools, instructions dropped), or
be withheld altogether (a flagged request to the client, which the server is then told
about). The HTTP side (proxy.mcp.relay) only moves the bytes.
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
from proxy.mcp.guarding import Check, McpGuard
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
        self.answer_server = answer_server  # POSTs the gateway's answer to a server request
        # Tools a tools/list check dropped, per (route, server): calling one by name is
        # refused too (a client may have listed the tools elsewhere).
        self.dropped: dict[tuple[str, str], dict[str, str]] = {}

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
        found = m.input_slots(message)
        if found is None or not route.mcp.input.guarded:
            return None, raw
        slots, context = found
        if self.keep_content:
            ex.content["input"] = render(slots, "last_user")
        started = time.perf_counter()
        check = await self.guard.text(route.mcp.input, self.gw.policies, route.fail, slots, context)
        _note(ex, check, started, call.tool)
        if check.decision in ("block", "error"):
            if check.decision == "block":
                text = f"flagged by {m.named(check.flagged)}"
                code = m.CONTENT_FILTERED
            else:
                text, code = "the guard is unavailable", m.GUARD_UNAVAILABLE
            if message.kind == "response":
                why = f"The gateway withheld the client's answer: {text}."
                return None, orjson.dumps(m.error_response(message.id, code, why))
            if message.method == m.TOOLS_CALL and check.decision == "block":
                result = m.blocked_arguments(message.tool, check.flagged)
                return m.result_response(message.id, result, call.version), raw
            why = f"The gateway did not send this {message.method} request: {text}."
            return m.error_response(message.id, code, why), raw
        if check.decision == "redact":
            if self.keep_content:
                ex.content["input_redacted"] = render(slots, "last_user")
            return None, orjson.dumps(message.body)
        return None, raw

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
        guarded = await self.server_message(ex, call, data, expect)
        if guarded is data:
            return event
        if not guarded:
            return b""  # withheld altogether
        kept = b"".join(line for line in lines if line.strip() and not line.startswith(b"data:"))
        return kept + b"data: " + guarded + b"\n\n"

    async def server_message(
        self, ex: Exchange, call: McpCall, data: bytes, expect: m.Message | None
    ) -> bytes:
        """A server message as the client may see it: `data` itself (the same object)
        when it passes unchanged, else its replacement."""
        try:
            message = m.parse_message(data)
        except m.Invalid:
            return data  # not JSON-RPC: nothing the client's model would read as a result
        if message.kind == "request" and message.method in m.SERVER_ASKS:
            return await self._server_asks(ex, call, message, data)
        result = message.body.get("result")
        if message.kind != "response" or not isinstance(result, dict):
            return data
        if expect is not None and message.id == expect.id:
            method, tool = expect.method, expect.tool
        else:  # a response on the GET stream (a resumed request): known by its shape
            method, tool = m.method_of(result), None
        if method not in m.GUARDED_RESULTS:
            return data
        route = ex.route
        assert route is not None
        side = route.mcp.output
        started = time.perf_counter()
        if not m.readable(method, result):
            if route.fail == "open":
                return data
            ex.decision = worse(ex.decision, "error")
            return orjson.dumps(
                m.error_response(
                    message.id,
                    m.UNREADABLE_RESULT,
                    f"The MCP server's {method} result has not the shape MCP defines; "
                    "the gateway withheld it.",
                )
            )
        if method == m.TOOLS_LIST:
            tools = result.get("tools") or []
            check = await self.guard.tools(side, self.gw.policies, route.fail, tools)
            _note(ex, check, started)
            call.dropped.update(check.dropped)
            # Listings come in pages: each updates the tools it lists, flagged or cleared.
            known = self.dropped.setdefault((route.name, call.server), {})
            for tool in tools:
                name = str(tool.get("name")) if isinstance(tool, dict) else ""
                if name in check.dropped:
                    known[name] = check.dropped[name]
                else:
                    known.pop(name, None)
            if not check.dropped:
                return data
            result["tools"] = [t for t in tools if str(t.get("name")) not in check.dropped]
            return orjson.dumps(message.body)
        slots = m.result_slots(method, result)
        if self.keep_content:
            ex.content["output"] = render(slots, "last_user")
        check = await self.guard.result(side, self.gw.policies, route.fail, method, tool, slots)
        _note(ex, check, started, tool)
        if check.decision in ("block", "error"):
            if method in (m.INITIALIZE, m.DISCOVER):  # it still connects, without them
                del result["instructions"]
                return orjson.dumps(message.body)
            return orjson.dumps(_withheld(message, method, tool, check, call.version))
        if check.decision == "redact":
            if self.keep_content:
                ex.content["output_redacted"] = render(slots, "last_user")
            return orjson.dumps(message.body)
        return data

    async def _server_asks(
        self, ex: Exchange, call: McpCall, message: m.Message, data: bytes
    ) -> bytes:
        """A server's request to the client (sampling, elicitation) under the output
        policies: a flagged one never reaches the client, and the server is told so."""
        route = ex.route
        assert route is not None
        params = message.body.get("params") or {}
        slots = m.string_slots({k: v for k, v in params.items() if k != "_meta"})
        context = f"Request from the tool server to the client ({message.method}):\n"
        started = time.perf_counter()
        side = route.mcp.output
        check = await self.guard.text(side, self.gw.policies, route.fail, slots, context, "output")
        _note(ex, check, started)
        if check.decision in ("block", "error"):
            if check.decision == "block":
                why, code = f"flagged by {m.named(check.flagged)}", m.CONTENT_FILTERED
            else:
                why, code = "the guard is unavailable", m.GUARD_UNAVAILABLE
            refusal = m.error_response(
                message.id, code, f"The gateway withheld this request: {why}."
            )
            self.gw.in_background(self.answer_server(call, refusal))
            return b""
        if check.decision == "redact":
            return orjson.dumps(message.body)
        return data


def _note(ex: Exchange, check: Check, started: float, tool: str | None = None) -> None:
    """The check's verdicts onto the exchange (each naming the tool it is about)."""
    if tool is not None:
        for outcome in check.result.outcomes:
            outcome.tool = tool
    ex.add(check.result, (time.perf_counter() - started) * 1000)
    ex.decision = worse(ex.decision, check.decision)


def _withheld(
    message: m.Message, method: str, tool: str | None, check: Check, version: str | None
) -> dict[str, Any]:
    """What the client gets instead of a flagged (or, failing closed, unchecked) result: a
    tool's failure for tools/call, a JSON-RPC error for the other methods."""
    if check.decision == "error":
        text = f"The gateway could not check the result of {method} (guard unavailable)."
        if method == m.TOOLS_CALL:
            result = m.tool_error(text + " It was withheld.")
            return m.result_response(message.id, result, version)
        return m.error_response(message.id, m.GUARD_UNAVAILABLE, text)
    if method == m.TOOLS_CALL:
        result = m.withheld_result(tool, check.flagged)
        return m.result_response(message.id, result, version)
    return m.error_response(
        message.id,
        m.CONTENT_FILTERED,
        f"The gateway withheld this {method} result: flagged by {m.named(check.flagged)}.",
        {"policies": check.flagged},
    )
