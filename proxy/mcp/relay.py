"""`/mcp/<name>`: the MCP gateway, a pure ASGI app speaking Streamable HTTP to the client
and to the configured server.

POST carries one JSON-RPC message, GET opens the server's stream, DELETE ends a session.
Each message the client POSTs and each one the server answers with (`application/json`,
or every event of a `text/event-stream`) goes through `Screen` (proxy.mcp.screen), which
applies the route's MCP policies: this module authenticates, routes, moves the bytes and
records what happened. `Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`,
`Accept` and MCP 2026-07-28's routing headers go both ways (`Mcp-Param-*` only as
the gateway checked them: proxy.mcp.params); the client's gateway key
never reaches the server, and the server's configured headers never reach the client.
A server that is unknown or not on the key's routes is a 404 either way (no tenant
learns another's server names).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from proxy.config import McpServer, Route, Side, Upstream, host_port
from proxy.exchange import Exchange, since
from proxy.gateway import Gateway
from proxy.handler import ProxyHandler, client_request_id, new_request_id
from proxy.mcp import messages as m
from proxy.mcp import params
from proxy.mcp.record import McpCall
from proxy.mcp.screen import Screen
from proxy.openai_api import OpenAIError
from proxy.shaping import JSON, ClientDisconnected, Sender
from proxy.sse import _BOM, EventSplitter
from proxy.tenancy import bearer_token
from proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("proxy.mcp")

PREFIX = "/mcp/"
# Request headers the server gets from the client (everything else stays here: the
# gateway key above all); response headers the client gets from the server.
_FORWARD = frozenset(
    (
        b"accept",
        b"content-type",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"last-event-id",
    )
)
_RETURN = frozenset(
    (b"content-type", b"mcp-session-id", b"mcp-protocol-version", b"cache-control", b"allow")
)


class Reject(Exception):
    """An HTTP error answered with a JSON-RPC error body."""

    def __init__(self, status: int, code: int, message: str, rpc_id: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.rpc_id = status, code, message, rpc_id


class McpHandler:
    def __init__(self, gateway: Gateway, proxy: ProxyHandler) -> None:
        self.gw = gateway
        # The /v1 proxy's body reader (size limit, disconnect) and stream pump (the
        # client going away cancels the server read) serve here unchanged.
        self.proxy = proxy
        self.pool = UpstreamPool({})  # one pooled session per server name
        self._upstreams: dict[str, tuple[McpServer, Upstream, tuple[str, int]]] = {}
        self.auditing, self.keep_content = proxy.auditing, proxy.keep_content
        self.screen = Screen(gateway, self.keep_content, self._answer_server)
        self.calls = gateway.metrics.registry.counter(
            "safeguard_mcp_messages_total",
            "MCP requests relayed, by server, JSON-RPC method and decision",
            ("server", "method", "decision"),
        )

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        request_id = new_request_id()  # never the client's: it could collide across tenants
        name = scope["path"].removeprefix(PREFIX).strip("/")
        servers = self.gw.config.mcp_servers  # read per request: a reload may change them
        label = PREFIX + name if name in servers else PREFIX + "other"
        ex = Exchange(request_id, label)
        ex.client_request_id = client_request_id(headers)
        call = McpCall(server=name, http_method=scope["method"])
        self.gw.metrics.in_flight.add(1)
        with self.gw.telemetry.server_span(scope["method"], label, scope["headers"]) as span:
            sent = Sender(send, receive)
            try:
                await self._handle(ex, call, scope, headers, receive, sent)
            except Reject as exc:
                await self._reject(ex, sent, exc)
            except UpstreamError as exc:
                await self._reject(ex, sent, Reject(exc.status, -32603, exc.message, call.rpc_id))
                ex.error = exc.code
            except ClientDisconnected:
                ex.status, ex.error = ex.status or 499, "client_disconnected"
            except asyncio.CancelledError:
                ex.status, ex.error = ex.status or 499, "client_disconnected"
                raise
            except Exception:
                log.exception("MCP request %s failed", request_id)
                failure = Reject(500, -32603, "The gateway hit an internal error.", call.rpc_id)
                await self._reject(ex, sent, failure)
            finally:
                self.gw.metrics.in_flight.add(-1)
                self._finish(ex, call, span)

    # -- the request -------------------------------------------------------------------

    def _route(self, ex: Exchange, name: str) -> Route:
        """The first of the tenant's routes that lists the server (404 if none does: an
        unknown server and another tenant's server look the same)."""
        tenant = ex.tenant
        assert tenant is not None
        routes = self.gw.config.routes
        for route_name in (tenant.route, *(r for _, r in tenant.routes)):
            route = routes.get(route_name) if route_name else None
            if route is not None and name in route.mcp.servers:
                return route
        raise Reject(404, m.INVALID_REQUEST, f"No MCP server {name!r} is available to this key.")

    async def _handle(
        self, ex: Exchange, call: McpCall, scope: dict, headers: dict, receive: Any, send: Sender
    ) -> None:
        token = bearer_token(headers.get(b"authorization"), headers.get(b"api-key"))
        ex.tenant = self.gw.tenancy.authenticate(token)
        if ex.tenant is None:
            raise Reject(401, m.INVALID_REQUEST, "Use a gateway key: Authorization: Bearer <key>.")
        ex.route = self._route(ex, call.server)
        call.session = _header(headers, b"mcp-session-id")
        call.version = _header(headers, b"mcp-protocol-version")
        method = scope["method"]
        if method == "POST":
            await self._post(ex, call, scope, headers, receive, send)
        elif method in ("GET", "DELETE"):
            response = await self._forward(ex, call, scope, None)
            await self._relay(ex, call, response, send, None)
        else:
            raise Reject(405, m.INVALID_REQUEST, f"Method {method} is not allowed on MCP.")

    async def _post(
        self, ex: Exchange, call: McpCall, scope: dict, headers: dict, receive: Any, send: Sender
    ) -> None:
        try:
            raw = await self.proxy._read_body(scope["headers"], headers, receive)
        except OpenAIError as exc:  # too large (413), or an encoding it cannot read (415)
            raise Reject(exc.status, m.INVALID_REQUEST, exc.message) from None
        try:
            message = m.parse_message(raw)
        except m.Invalid as exc:
            raise Reject(400, exc.code, str(exc)) from None
        call.take(message)
        mirrored = params.matched(scope["headers"], message)
        answer, raw = await self.screen.client_message(ex, call, message, raw)
        if answer is not None:
            await self._answer(ex, send, answer)
            return
        response = await self._forward(ex, call, scope, raw, params.rendered(mirrored, message))
        expect = message if message.kind == "request" else None
        await self._relay(ex, call, response, send, expect)

    async def _forward(
        self,
        ex: Exchange,
        call: McpCall,
        scope: dict,
        raw: bytes | None,
        mirrored: Sequence[tuple[bytes, bytes]] = (),
    ) -> UpstreamResponse:
        upstream, (host, port) = self._upstream(call.server)
        operation = call.method or scope["method"]
        span = self.gw.telemetry.start_upstream_span(operation, call.tool, host, port)
        if span.is_recording():
            span.attributes.pop("gen_ai.provider.name", None)
            span.attributes.pop("gen_ai.request.model", None)
            span.set_attributes(call.span_attributes())
        ex.upstream_span = span
        extra: dict[str, str] = {}
        self.gw.telemetry.inject(extra, span)
        forwarded = [(k, v) for k, v in scope["headers"] if k in _FORWARD]
        # Mcp-Method, Mcp-Name, Mcp-Param-*: only as they mirror the body the gateway checked
        forwarded.extend(mirrored)
        query = scope.get("query_string") or b""
        path = "?" + query.decode("latin-1") if query else ""
        ex.upstream_started = time.perf_counter()
        allowed = frozenset(k.decode("latin-1") for k, _ in forwarded)
        return await self.pool.send(upstream, scope["method"], path, raw, forwarded, extra, allowed)

    def _upstream(self, name: str) -> tuple[Upstream, tuple[str, int]]:
        """The pool's view of a configured server (built once per config entry: a reload
        that changes the entry builds it anew) and its address for spans."""
        server = self.gw.config.mcp_servers[name]
        known = self._upstreams.get(name)
        if known is None or known[0] is not server:
            upstream = Upstream(
                name=server.name,
                base_url=server.url,
                headers=server.headers,
                timeout_s=server.timeout_s,
                connect_timeout_s=server.connect_timeout_s,
            )
            known = self._upstreams[name] = (server, upstream, host_port(server.url))
        return known[1], known[2]

    # -- the answer ----------------------------------------------------------------------

    async def _relay(
        self,
        ex: Exchange,
        call: McpCall,
        response: UpstreamResponse,
        send: Sender,
        expect: m.Message | None,
    ) -> None:
        """The server's answer to the client, each JSON-RPC response in it guarded."""
        if response.status in (401, 403):
            # The server refused the gateway's own credentials (mcp_servers.<name>.headers):
            # nothing the client can fix, and its 401 must not send the client to log in.
            response.close()
            raise Reject(
                502,
                -32603,
                f"The MCP server {call.server!r} refused the gateway's credentials "
                f"(HTTP {response.status}).",
                call.rpc_id,
            )
        headers = [(k, v) for k, v in response.headers if k in _RETURN] + ex.headers()
        call.session = call.session or _value(response.headers, b"mcp-session-id")
        ex.status = response.status
        # Any status: a 4xx's JSON-RPC error is text the client reads as much as a result.
        watching = self._output(ex).guarded
        if not response.is_event_stream:
            body = await response.read()
            ex.upstream_ms = since(ex.upstream_started)
            if watching and body:
                screened = await self.screen.server_message(ex, call, body, expect)
                if screened is not body:  # the gateway's JSON now, whatever the server said
                    headers = [(k, v) for k, v in headers if k != b"content-type"]
                    headers.append((b"content-type", JSON))
                if not screened and expect is not None:  # all withheld: the client still waits
                    why = "The gateway withheld the MCP server's whole answer."
                    screened = orjson.dumps(m.error_response(expect.id, m.CONTENT_FILTERED, why))
                body = screened
            await send.whole(response.status, headers, body)
            return
        await send.start(response.status, headers)
        frames = self._events(ex, call, response, expect) if watching else response.chunks()
        try:
            await self.proxy._pump(ex, frames, send)
        finally:
            response.close()
            ex.upstream_ms = since(ex.upstream_started)

    async def _events(
        self, ex: Exchange, call: McpCall, response: UpstreamResponse, expect: m.Message | None
    ) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        start: bytes | None = b""  # the stream's first bytes, until past a BOM
        async for chunk in response.chunks():
            if start is not None:  # clients drop a stream's leading BOM (as SSE says)
                chunk = start + chunk
                if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                    start = chunk
                    continue
                start, chunk = None, chunk.removeprefix(_BOM)
            for event in splitter.feed(chunk):
                if out := await self.screen.event(ex, call, event, expect):
                    yield out
        if (rest := splitter.rest()) and (out := await self.screen.event(ex, call, rest, expect)):
            yield out

    async def _answer_server(self, call: McpCall, body: dict[str, Any]) -> None:
        """POST the gateway's answer to a server request on the client's session."""
        headers = [(b"content-type", JSON), (b"accept", b"application/json, text/event-stream")]
        if call.session:
            headers.append((b"mcp-session-id", call.session.encode("latin-1")))
        if call.version:
            headers.append((b"mcp-protocol-version", call.version.encode("latin-1")))
        upstream, _ = self._upstream(call.server)
        try:
            allowed = frozenset(k.decode("latin-1") for k, _ in headers)
            response = await self.pool.send(
                upstream, "POST", "", orjson.dumps(body), headers, {}, allowed
            )
            await response.read()
        except UpstreamError as exc:
            log.warning("MCP server %s: could not refuse its request: %s", call.server, exc.code)

    def _output(self, ex: Exchange) -> Side:
        assert ex.route is not None
        return ex.route.mcp.output

    async def _answer(self, ex: Exchange, send: Sender, body: dict[str, Any]) -> None:
        """The gateway answers a request itself (the server never sees it); a notification
        it did not send is accepted (202), as the server would."""
        if body is m.ACCEPTED:
            ex.status = 202
            await send.whole(202, ex.headers(), b"")
            return
        ex.status = 200
        await send.whole(200, [(b"content-type", JSON), *ex.headers()], orjson.dumps(body))

    async def _reject(self, ex: Exchange, send: Sender, exc: Reject) -> None:
        ex.status = exc.status
        ex.error = ex.error or f"mcp_{exc.status}"
        if send.started:
            log.warning("MCP request %s failed after the response started", ex.request_id)
            return
        body = orjson.dumps(m.error_response(exc.rpc_id, exc.code, exc.message))
        headers = [(b"content-type", JSON), *ex.headers()]
        if exc.status == 405:
            headers.append((b"allow", b"GET, POST, DELETE"))
        await send.whole(exc.status, headers, body)

    def _finish(self, ex: Exchange, call: McpCall, span: Any) -> None:
        total_s = time.perf_counter() - ex.started
        route_name = ex.route.name if ex.route else ""
        metrics = self.gw.metrics
        metrics.requests.inc(route_name, ex.endpoint, str(ex.status))
        metrics.request_duration.observe(total_s, route_name, ex.endpoint)
        if ex.upstream_started is not None:
            metrics.upstream_duration.observe(
                (ex.upstream_ms or since(ex.upstream_started) or 0) / 1000, route_name
            )
            upstream_span = ex.upstream_span
            if upstream_span is not None and upstream_span.is_recording():
                if ex.status >= 400 or ex.error:
                    self.gw.telemetry.set_error(upstream_span, ex.error or str(ex.status))
                upstream_span.end()
        if ex.tenant is not None and call.server in self.gw.config.mcp_servers:
            self.calls.inc(call.server, call.method_label, ex.decision)
        self.gw.telemetry.set_server_attributes(
            span,
            status_code=ex.status,
            tenant=ex.tenant.name if ex.tenant else None,
            route=route_name or None,
            decision=ex.decision,
        )
        if span.is_recording():
            span.set_attributes(call.span_attributes())
        if ex.tenant is None or not self.auditing:
            return
        record = ex.record(total_s) | {"model": None, "mcp": call.record()}
        if ex.pending:
            self.gw.in_background(self._audit_later(ex, record))
        else:
            self.gw.audit.submit(record)

    async def _audit_later(self, ex: Exchange, record: dict[str, Any]) -> None:
        """Shadow verdicts arrive after the answer."""
        results = await asyncio.gather(*ex.pending, return_exceptions=True)
        extra = [o.record() for o in results if o is not None and hasattr(o, "record")]
        self.gw.audit.submit(record | {"verdicts": record["verdicts"] + extra})


def _header(headers: dict, name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value else None


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
