"""The `/v1/*` proxy as a pure ASGI app: auth, route, guard, forward, record.

Unguarded traffic is forwarded as raw bytes (no JSON re-encoding, SSE untouched); a body
is re-serialized only when a policy redacted it or annotations are added.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import ModuleType
from typing import Any

from proxy import anthropic_api
from proxy.anthropic_api import MESSAGES
from proxy.bodies import GZIP, IDENTITY, as_read, content_coding, gunzip, refuse_repeated_model
from proxy.config import host_port
from proxy.decision import Refuse, on_request, on_response
from proxy.endpoints import FORWARD, MODELS_KIND, OTHER, MethodNotAllowed, Table, Target
from proxy.exchange import Exchange, json_or_none, since, trace_id_of
from proxy.gateway import Gateway
from proxy.guard.engine import Outcome, SideResult, worse
from proxy.guard.streaming import Relay, StreamGuard
from proxy.hangup import HangUps
from proxy.openai_api import (
    GENERATION_ENDPOINTS,
    OPERATION,
    OpenAIError,
    parse_json_body,
)
from proxy.policies import Policy
from proxy.shaping import (
    JSON,
    ClientDisconnected,
    Sender,
    error_from_upstream,
    too_large,
)
from proxy.stream_watch import StreamWatch
from proxy.surfaces import surface_for
from proxy.surfaces.text import Piece, render
from proxy.tenancy import bearer_token
from proxy.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("proxy")

# Request ids: a random per-process prefix and a counter (unique across workers, no
# syscall per request).
_ID_PREFIX = os.urandom(10).hex()
_ids = itertools.count()
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")  # echoed in a header: no CR/LF


def new_request_id() -> str:
    """A record id of the gateway's own, unique across workers (no syscall per request)."""
    return f"req_{_ID_PREFIX}{next(_ids):012x}"


def client_request_id(headers: Mapping[bytes, bytes]) -> str | None:
    """The client's own request id, kept beside the record id (echoed: no CR/LF)."""
    client_id = headers.get(b"x-client-request-id") or headers.get(b"x-request-id")
    return client_id.decode() if client_id and _CLIENT_ID.fullmatch(client_id) else None


class ProxyHandler:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.max_body = gateway.config.server.max_body_bytes
        self.endpoints = Table()
        self.hang_ups = HangUps()  # a client gone before its answer cancels the work (499)
        audit = gateway.config.audit
        self.auditing = audit.enabled
        self.keep_content = self.auditing and audit.content != "none"  # texts for the record
        self._addresses = {
            name: host_port(u.base_url) for name, u in gateway.config.upstreams.items()
        }

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])  # last value wins; auth headers are single-valued
        # The record id is always the gateway's own: a client's id is kept beside it, so
        # two tenants sending the same x-request-id still get two records.
        request_id = new_request_id()
        method = scope["method"]
        try:
            target: Target | None = self.endpoints.resolve(
                method, scope["path"], scope.get("raw_path")
            )
            miss = None
        except OpenAIError as exc:
            target, miss = None, exc
        ex = Exchange(request_id, target.path if target else scope["path"][:256])
        ex.target = target
        ex.client_request_id = client_request_id(headers)
        self.gw.metrics.in_flight.add(1)
        label = target.endpoint.path if target else OTHER
        with self.gw.telemetry.server_span(method, label, scope["headers"]) as span:
            sent = Sender(send, receive)
            try:
                if miss is not None:
                    self._authenticate(ex, headers)
                    raise miss
                await self._handle(ex, scope, headers, receive, sent)
            except OpenAIError as exc:
                await self._fail(ex, sent, exc)
            except UpstreamError as exc:
                await self._fail(ex, sent, error_from_upstream(exc))
            except ClientDisconnected:
                ex.status, ex.error = ex.status or 499, "client_disconnected"
            except asyncio.CancelledError:
                ex.status, ex.error = ex.status or 499, "client_disconnected"
                raise
            except Exception:
                log.exception("request %s failed", request_id)
                await self._fail(
                    ex,
                    sent,
                    OpenAIError(
                        500,
                        "The gateway hit an internal error.",
                        type="server_error",
                        code="internal_error",
                    ),
                )
            finally:
                self.gw.metrics.in_flight.add(-1)
                ex.trace_id = trace_id_of(span)
                self._finish(ex, span)

    # -- the request -------------------------------------------------------------------

    def _authenticate(self, ex: Exchange, headers: dict) -> None:
        api_key = headers.get(b"api-key") or headers.get(b"x-api-key")  # Azure's, Anthropic's
        tenant = self.gw.tenancy.authenticate(bearer_token(headers.get(b"authorization"), api_key))
        if tenant is None:
            raise OpenAIError(
                401, "Incorrect API key provided. Use a gateway key.", code="invalid_api_key"
            )
        ex.tenant = tenant

    async def _handle(
        self, ex: Exchange, scope: dict, headers: dict, receive: Any, send: Sender
    ) -> None:
        self._authenticate(ex, headers)
        assert ex.tenant is not None and ex.target is not None
        kind = ex.target.endpoint.kind
        if kind == MODELS_KIND:
            ex.route = self.gw.tenancy.default_route(ex.tenant)
            await self.hang_ups.run(send, self._forward_raw(ex, scope, None, send))
            return
        raw = await self._read_body(scope["headers"], headers, receive)
        body = parse_json_body(raw)
        model = body.get("model")
        ex.model = model if isinstance(model, str) else None
        ex.stream = bool(body.get("stream"))
        route = self.gw.tenancy.route_for(ex.tenant, ex.model)
        if route is None:
            raise OpenAIError(
                404,
                f"The model {ex.model!r} does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        ex.route = route
        tenant = ex.tenant
        if tenant.routes:  # the model picks the route (or is refused): a repeated
            refuse_repeated_model(raw)  # `model` must not pick one and be served another
        anthropic = ex.endpoint in anthropic_api.ENDPOINTS
        if (self.gw.config.upstreams[route.upstream].api == "anthropic") != anthropic:
            if anthropic:
                raise anthropic_api.not_messages_route(route.name)
            raise OpenAIError(
                404,
                f"Your route {route.name!r} leads to a Messages API upstream: use /v1/messages.",
                code="unknown_url",
            )
        if kind == FORWARD:
            await self.hang_ups.run(send, self._forward_raw(ex, scope, raw, send))
            return
        await self.hang_ups.run(send, self._generate(ex, scope, raw, body, send))

    async def _read_body(
        self, raw_headers: list[tuple[bytes, bytes]], headers: dict, receive: Any
    ) -> bytes:
        """The body, decoded: gzip within max_body_bytes (413), other codings 415."""
        coding = content_coding(raw_headers) if b"content-encoding" in headers else IDENTITY
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise too_large(self.max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body"):
                raw = b"".join(chunks)
                return gunzip(raw, self.max_body) if coding == GZIP else raw

    async def _forward_raw(
        self, ex: Exchange, scope: dict, raw: bytes | None, send: Sender
    ) -> None:
        """Pass-through: status, headers and body bytes exactly as the upstream sent them."""
        response = await self._upstream_call(ex, scope, raw)
        await self._relay(ex, response, send)

    async def _upstream_call(
        self, ex: Exchange, scope: dict, raw: bytes | None
    ) -> UpstreamResponse:
        """Send upstream; returns with status and headers in and the body unread. The
        upstream span stays open until the request is finished (streams included)."""
        assert ex.route is not None
        upstream = self.gw.config.upstreams[ex.route.upstream]
        host, port = self._addresses[upstream.name]
        operation = OPERATION.get(ex.endpoint, "chat")
        provider = upstream.api  # gen_ai.provider.name: openai | anthropic
        span = self.gw.telemetry.start_upstream_span(operation, ex.model, host, port, provider)
        ex.upstream_span = span
        trace_headers: dict[str, str] = {}
        self.gw.telemetry.inject(trace_headers, span)
        target = ex.target
        assert target is not None
        forward = ex.route.forward_headers
        if target.endpoint.headers:
            forward = forward | target.endpoint.headers
        ex.upstream_started = time.perf_counter()
        # The URL comes from the endpoint table; the client's query string is not sent.
        return await self.gw.upstreams.send(
            upstream,
            target.endpoint.method,
            target.upstream_path,
            raw,
            scope["headers"],
            trace_headers,
            forward,
        )

    async def _relay(self, ex: Exchange, response: UpstreamResponse, send: Sender) -> None:
        """Whole bodies are read first (a drop becomes a clean 502); streams flow through."""
        if not response.is_event_stream:
            body = await response.read()
            ex.upstream_ms = since(ex.upstream_started)
            ex.status = response.status
            if response.status == 200 and self._reads_usage(ex):
                ex.take_answer(json_or_none(body))
            await send.whole(response.status, response.headers + ex.headers(), body)
            return
        await self._pipe(ex, response, send, Relay(ex.endpoint, self._watcher(ex)))

    async def _pipe(
        self, ex: Exchange, response: UpstreamResponse, send: Sender, stream: StreamGuard | Relay
    ) -> None:
        """Stream the answer to the client through `stream` (a guard, or a plain relay
        that still ends a broken stream with an error frame), then note what it saw."""
        await send.start(response.status, response.headers + ex.headers())
        ex.status = response.status
        try:
            await self._pump(ex, stream.run(response.chunks()), send, stream)
        finally:
            response.close()
            ex.upstream_ms = since(ex.upstream_started)
            ex.error = ex.error or stream.failure
            if stream.watch is not None:
                ex.take_stream(stream.watch)

    def _watcher(self, ex: Exchange) -> StreamWatch | None:
        """Notes usage and finish reasons as the stream passes, when something will use them."""
        return StreamWatch(ex.endpoint) if self._reads_usage(ex) else None

    def _reads_usage(self, ex: Exchange) -> bool:
        """A relayed answer's usage, model and finish reasons feed the token metrics and
        the upstream span: read a generation's only when either will use them."""
        return (ex.endpoint in GENERATION_ENDPOINTS or ex.endpoint == MESSAGES) and (
            self.gw.metrics.exposed or ex.upstream_span.is_recording()
        )

    async def _pump(
        self,
        ex: Exchange,
        frames: AsyncIterator[bytes],
        send: Sender,
        stream: StreamGuard | Relay | None = None,
    ) -> None:
        """Send frames until they end, the upstream fails, or the client goes away (which
        cancels the upstream read and so closes that connection). A frame `stream` knows
        to be the last goes out with the body's end."""
        pumping = asyncio.ensure_future(self._drain(ex, frames, send, stream))
        gone = asyncio.ensure_future(send.disconnected())
        try:
            await asyncio.wait((pumping, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not pumping.done():
                pumping.cancel()
                ex.error = "client_disconnected"
        if pumping.cancelled() or not pumping.done():
            await asyncio.wait((pumping,))
            return
        try:
            if pumping.result():
                return  # the body ended with its last frame
        except UpstreamError as exc:
            # Headers are out: the client sees the body end early (no [DONE] for streams).
            ex.error = exc.code
            log.warning("request %s: upstream failed mid-body: %s", ex.request_id, exc.code)
        await send.end()

    async def _drain(
        self,
        ex: Exchange,
        frames: AsyncIterator[bytes],
        send: Sender,
        stream: StreamGuard | Relay | None,
    ) -> bool:
        """Send the frames; True when the last went out with the body's end."""
        ended = False
        async for frame in frames:  # read to its end: the stream then lets go of its tasks
            if ended:
                continue  # (nothing comes after the last frame)
            if ex.ttft_ms is None:
                ex.ttft_ms = (time.perf_counter() - ex.started) * 1000
            if stream is not None and stream.finished:
                await send.end(frame)
                ended = True
            else:
                await send.body(frame)
        return ended

    # -- guarded generation ------------------------------------------------------------

    async def _generate(
        self, ex: Exchange, scope: dict, raw: bytes, body: dict, send: Sender
    ) -> None:
        route = ex.route
        assert route is not None
        policies = self.gw.policies  # one snapshot for the whole request
        side = route.input
        if not (side.guarded or route.output.guarded):
            await self._forward_raw(ex, scope, raw, send)
            return
        surface = surface_for(ex.endpoint)
        pieces: Sequence[Piece] = ()
        if side.guarded:  # the upstream gets what the guard read (duplicate keys resolved)
            pieces, raw = surface.input_pieces(body), as_read(body, raw)
        elif self.keep_content:  # read for the record only: what the guard would refuse
            with contextlib.suppress(OpenAIError):  # is the upstream's to judge here
                pieces = surface.input_pieces(body)
        if self.keep_content:
            ex.content["input"] = render(pieces, True)
        pending: asyncio.Future[UpstreamResponse] | None = None
        if side.mode == "parallel":
            pending = asyncio.ensure_future(self._upstream_call(ex, scope, raw))
        try:
            if side.guarded:
                started = time.perf_counter()
                judged = self.gw.guard.judge_request(side, policies, pieces)
                inputs = judged if type(judged) is SideResult else await judged
                ex.add(inputs, (time.perf_counter() - started) * 1000)
            else:
                inputs = SideResult()
            action = on_request(surface, route.fail, body, inputs)
            ex.decision = action.decision
            if isinstance(action, Refuse):
                raise action.error
            if action.body is not None:
                raw = action.body
                if self.keep_content:
                    ex.content["input_redacted"] = render(pieces, True, inputs.edits)
            response = await (
                pending if pending is not None else self._upstream_call(ex, scope, raw)
            )
        except BaseException:
            if pending is not None:
                pending.cancel()
                if pending.done() and not pending.cancelled() and pending.exception() is None:
                    pending.result().close()
            raise
        if response.status != 200:
            await self._relay(ex, response, send)
            return
        if response.is_event_stream:  # guarded as a stream even if none was asked for
            await self._stream(ex, response, send, policies)
        else:
            await self._complete(ex, response, send, policies, surface, inputs)

    async def _complete(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        send: Sender,
        policies: Mapping[str, Policy],
        surface: ModuleType,
        inputs: SideResult,
    ) -> None:
        route = ex.route
        assert route is not None
        raw = await response.read()
        ex.upstream_ms = since(ex.upstream_started)
        body = json_or_none(raw)
        ex.take_answer(body)
        if body is None:
            if route.output.policies and route.fail == "closed":
                raise OpenAIError(
                    502,
                    "The upstream answered with a body the output guard cannot read.",
                    type="server_error",
                    code="upstream_invalid",
                )
            await send.whole(response.status, response.headers + ex.headers(), raw)
            ex.status = response.status
            return
        # reasoning (thinking blocks, reasoning_content, reasoning items) when the route says so
        pieces = surface.output_pieces(body, route.output.thinking)
        if self.keep_content:
            ex.content["output"] = render(pieces, False)
        if route.output.guarded:
            started = time.perf_counter()
            judged = self.gw.guard.judge_response(route.output, policies, pieces)
            outputs = judged if type(judged) is SideResult else await judged
            ex.add(outputs, (time.perf_counter() - started) * 1000)
        else:
            outputs = SideResult()
        action = on_response(surface, route.fail, body, inputs, outputs)
        ex.decision = worse(ex.decision, action.decision)
        if isinstance(action, Refuse):
            raise action.error
        if outputs.edits and self.keep_content:
            ex.content["output_redacted"] = render(pieces, False, outputs.edits)
        ex.status = response.status
        await send.whole(response.status, response.headers + ex.headers(), action.body)

    async def _stream(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        send: Sender,
        policies: Mapping[str, Policy],
    ) -> None:
        route = ex.route
        assert route is not None
        side = route.output
        if not side.guarded:
            await self._pipe(ex, response, send, Relay(ex.endpoint, self._watcher(ex)))
            return
        guard = StreamGuard(
            self.gw.guard, side, policies, ex.endpoint, route.fail, self._watcher(ex)
        )
        try:
            await self._pipe(ex, response, send, guard)
        finally:
            if side.stream == "passthrough":
                ex.pending.append(asyncio.ensure_future(self._judge_passthrough(ex, guard)))
            else:
                self._take_stream_result(ex, guard)
                ex.pending += guard.shadow

    def _take_stream_result(self, ex: Exchange, guard: StreamGuard) -> None:
        ex.outcomes += guard.outcomes
        ex.decision = worse(ex.decision, guard.decision)
        if self.keep_content:
            ex.content["output"] = _joined(guard, guard.full_text)
            ex.content["output_redacted"] = _joined(guard, guard.released)

    async def _judge_passthrough(self, ex: Exchange, guard: StreamGuard) -> None:
        """Everything was sent already: classify the whole answer for the record only."""
        await guard.judge_passthrough()
        self._take_stream_result(ex, guard)
        shadow = await asyncio.gather(*guard.shadow, return_exceptions=True)
        ex.outcomes += [o for o in shadow if isinstance(o, Outcome)]

    # -- endings -------------------------------------------------------------------------

    async def _fail(self, ex: Exchange, send: Sender, exc: OpenAIError) -> None:
        ex.status = exc.status
        ex.error = ex.error or exc.code
        if send.started:
            log.warning("request %s failed after the response started: %s", ex.request_id, exc.code)
            return
        body = (
            anthropic_api.error_body(exc, ex.request_id)
            if ex.endpoint in anthropic_api.ENDPOINTS
            else exc.body()
        )
        headers = [(b"content-type", JSON), *ex.headers()]
        if isinstance(exc, MethodNotAllowed):
            headers += exc.headers  # Allow
        await send.whole(exc.status, headers, body)

    def _finish(self, ex: Exchange, span: Any) -> None:
        total_s = time.perf_counter() - ex.started
        route_name = ex.route.name if ex.route else ""
        metrics = self.gw.metrics
        label = ex.target.endpoint.path if ex.target else OTHER
        settle_decision(ex)
        metrics.requests.inc(route_name, label, str(ex.status))
        metrics.request_duration.observe(total_s, route_name, label)
        if ex.ttft_ms is not None and ex.stream:
            metrics.upstream_ttft.observe(ex.ttft_ms / 1000, route_name)
        if ex.upstream_started is not None:
            self._upstream_done(ex, route_name)
        self.gw.telemetry.set_server_attributes(
            span,
            status_code=ex.status,
            tenant=ex.tenant.name if ex.tenant else None,
            route=route_name or None,
            decision=ex.decision,
        )
        if ex.tenant is None:
            return
        if ex.pending:
            self.gw.in_background(self._audit_later(ex, total_s))
        elif self.auditing:
            self.gw.audit.submit(ex.record(total_s))

    def _upstream_done(self, ex: Exchange, route_name: str) -> None:
        """Usage and outcome onto the upstream span and metrics, then end the span."""
        usage = ex.usage or {}
        tokens_in = usage.get("prompt_tokens", usage.get("input_tokens"))
        tokens_out = usage.get("completion_tokens", usage.get("output_tokens"))
        metrics = self.gw.metrics
        if ex.upstream_ms is None:
            ex.upstream_ms = since(ex.upstream_started)
        metrics.upstream_duration.observe(ex.upstream_ms / 1000, route_name)
        if isinstance(tokens_in, int):
            metrics.upstream_tokens.add(tokens_in, route_name, "input")
        if isinstance(tokens_out, int):
            metrics.upstream_tokens.add(tokens_out, route_name, "output")
        span = ex.upstream_span
        if span is None or not span.is_recording():
            return
        answer = ex.answer or {}
        if isinstance(answer.get("response"), dict):
            answer = answer["response"]
        reasons = ex.finish_reasons or [
            c["finish_reason"]
            for c in answer.get("choices") or ()
            if isinstance(c, dict) and c.get("finish_reason")
        ]
        if not reasons and isinstance(answer.get("stop_reason"), str):  # Messages API
            reasons = [answer["stop_reason"]]
        self.gw.telemetry.set_response(
            span,
            response_model=answer.get("model"),
            response_id=answer.get("id"),
            finish_reasons=reasons,
            input_tokens=tokens_in if isinstance(tokens_in, int) else None,
            output_tokens=tokens_out if isinstance(tokens_out, int) else None,
        )
        if ex.error and ex.error.startswith("upstream_"):
            self.gw.telemetry.set_error(span, ex.error)
        elif ex.status >= 500 or (ex.status >= 400 and ex.decision != "block"):
            self.gw.telemetry.set_error(span, str(ex.status))
        span.end()

    async def _audit_later(self, ex: Exchange, total_s: float) -> None:
        """Shadow verdicts and passthrough-stream verdicts arrive after the response."""
        results = await asyncio.gather(*ex.pending, return_exceptions=True)
        ex.outcomes += [o for o in results if isinstance(o, Outcome)]
        settle_decision(ex)
        if self.auditing:
            self.gw.audit.submit(ex.record(total_s))


def settle_decision(ex: Exchange) -> None:
    """A pass the guard could not vouch for is `fail_open`, not `allow`: an enforced
    policy's classification failed on a `fail: open` route and nothing blocked. Set once
    the answer is out (the response header keeps allow|annotate|redact|block)."""
    route = ex.route
    if route is None or route.fail != "open" or ex.decision in ("block", "fail_open"):
        return
    if any(o.verdict.error and not o.verdict.shadow for o in ex.outcomes):
        ex.decision = "fail_open"


def _joined(guard: StreamGuard, texts: Mapping[Any, str]) -> str:
    """A stream's texts for the audit: each channel (choice, tool call) under its name."""
    return "\n\n".join(
        f"[{label}] {text}" if (label := guard.label(key)) else text for key, text in texts.items()
    )
