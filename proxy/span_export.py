"""Getting finished spans out, off the request path.

`build_export(traces, exporter, resource, scope)` picks one of:

- `BatchExport` + `OtlpHttp` (`traces: otlp`): a queue filled as spans end; a thread
  wakes every `OTEL_BSP_SCHEDULE_DELAY` ms, or as soon as a batch
  (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) is queued, encodes it with proxy.otlp and POSTs it.
  A full queue (`OTEL_BSP_MAX_QUEUE_SIZE`) drops spans and logs it; it never blocks.
  The gateway runs this in its recorder process (`otlp_export(..., encoded=True)`, fed
  chunks the recorder has encoded); in-process it serves `Telemetry` used on its own.
- `BatchExport` + an SDK `SpanExporter` (`traces: console`): the same thread hands SDK
  `ReadableSpan`s to the exporter.
- `SyncExport`: an injected `SpanExporter` gets each span as it ends (as the SDK's
  SimpleSpanProcessor does): the in-memory exporter in tests, a custom one in embedding.

The OTLP/HTTP endpoint, headers, timeout, compression and TLS files come from the
standard OTEL_EXPORTER_OTLP_(TRACES_)* variables, read as the SDK's exporter reads them.
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from proxy import otlp
from proxy.spans import SERVER

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

    from proxy.spans import Span

log = logging.getLogger("proxy.telemetry")

_RETRY_STATUS = frozenset({429, 502, 503, 504})
_LOG_EVERY_S = 30.0


def _env(name: str, default: str = "") -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>."""
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")
        or default
    )


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default
    return value if value > 0 else default


class OtlpHttp:
    """POSTs encoded ExportTraceServiceRequests to the collector, with retries."""

    def __init__(self) -> None:
        from opentelemetry.util.re import parse_env_headers

        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
            endpoint = f"{base.removesuffix('/')}/v1/traces"
        self.endpoint = endpoint
        try:
            self.timeout = float(_env("TIMEOUT", "10"))
        except ValueError:
            self.timeout = 10.0
        self.compression = _env("COMPRESSION", "none").strip().lower()
        if self.compression not in ("gzip", "deflate", "none"):
            log.warning("unsupported OTLP compression %r; sending uncompressed", self.compression)
            self.compression = "none"
        headers = {"content-type": "application/x-protobuf", "user-agent": "safeguard-gateway"}
        headers.update(parse_env_headers(_env("HEADERS"), liberal=True))
        if self.compression != "none":
            headers["content-encoding"] = self.compression
        cert = _env("CLIENT_CERTIFICATE")
        key = _env("CLIENT_KEY")
        self._client = httpx.Client(
            headers=headers,
            timeout=self.timeout,
            verify=_env("CERTIFICATE") or True,
            cert=(cert, key) if cert and key else (cert or None),
        )

    def send(self, body: bytes) -> str | None:
        """None when the collector took it, else why not (after retrying what may pass)."""
        if self.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        delay = 0.5
        while True:
            try:
                response = self._client.post(self.endpoint, content=body)
            except httpx.HTTPError as exc:
                failure, retry = f"{type(exc).__name__}: {exc}", True
            else:
                if response.is_success:
                    return None
                failure, retry = (
                    f"HTTP {response.status_code}",
                    response.status_code in _RETRY_STATUS,
                )
            if not retry or time.monotonic() + delay > deadline:
                return failure
            time.sleep(delay)
            delay *= 2

    def close(self) -> None:
        self._client.close()


class SpanExport:
    """Where `Span.end()` hands a finished span."""

    def add(self, span: Span) -> None:
        raise NotImplementedError

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return True

    def shutdown(self) -> None:
        return None


class SyncExport(SpanExport):
    """Each span to an SDK exporter as it ends."""

    def __init__(self, exporter: SpanExporter, resource: Resource, scope: str) -> None:
        self._exporter = exporter
        self._convert = ReadableConverter(resource, scope)

    def add(self, span: Span) -> None:
        try:
            self._exporter.export([self._convert(span)])
        except Exception:
            log.exception("span exporter failed")

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        return self._exporter.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self._exporter.shutdown()


class BatchExport(SpanExport):
    """A queue filled on the request path, drained in batches by one exporter thread.

    Items are spans, or (in the recorder) chunks of spans already encoded by the gateway;
    `add(item, count)` says how many spans an item holds, and the queue and batch limits
    count spans.
    """

    def __init__(self, send: Any, *, close: Any = None) -> None:
        self._send = send  # list of items -> None, or why it failed
        self._close = close
        self._items: list[tuple[Any, int]] = []  # (item, spans in it)
        self._queued = 0
        self._capacity = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 16_384)
        self._batch = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._cond = threading.Condition(threading.Lock())
        self._flushes = 0  # asked for
        self._flushed = 0  # done
        self._stopping = False
        self.exported = self.dropped = self.failed = 0
        self._logged: tuple[str, float] = ("", 0.0)
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def add(self, item: Any, count: int = 1) -> None:
        with self._cond:
            full = self._queued + count > self._capacity
            if full:
                self.dropped += count
            else:
                self._items.append((item, count))
                self._queued += count
                if self._queued >= self._batch:
                    self._cond.notify()
        if full:
            self._warn("queue full", f"span queue full ({self._capacity}); spans dropped")

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        with self._cond:
            if not self._thread.is_alive():
                return not self._items
            self._flushes += 1
            wanted = self._flushes
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._flushed >= wanted, timeout_s)

    def shutdown(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        if self._close is not None:
            self._close()

    def _run(self) -> None:
        while True:
            with self._cond:
                asked = self._stopping or self._flushes > self._flushed
                if not asked and self._queued < self._batch:
                    self._cond.wait(self._delay_s)
                stopping, flushes = self._stopping, self._flushes
            while batch := self._take():
                items, count = batch
                try:
                    failure = self._send(items)
                except Exception as exc:  # a bug must not stop the exporter
                    failure = f"{type(exc).__name__}: {exc}"
                if failure is None:
                    self.exported += count
                else:
                    self.failed += count
                    self._warn("failed", f"span export failed ({failure}); {count} spans lost")
            with self._cond:
                self._flushed = flushes
                self._cond.notify_all()
            if stopping:
                return

    def _take(self) -> tuple[list[Any], int] | None:
        """Up to a batch's worth of spans (at least one item) from the queue's head."""
        with self._cond:
            taken = count = 0
            while taken < len(self._items) and (taken == 0 or count < self._batch):
                count += self._items[taken][1]
                taken += 1
            if not taken:
                return None
            items = [item for item, _ in self._items[:taken]]
            del self._items[:taken]
            self._queued -= count
            return items, count

    def _warn(self, kind: str, message: str) -> None:
        """Rate-limited: one line per kind of trouble every _LOG_EVERY_S."""
        now = time.monotonic()
        if kind != self._logged[0] or now - self._logged[1] >= _LOG_EVERY_S:
            self._logged = (kind, now)
            log.warning("%s (exported=%d, dropped=%d)", message, self.exported, self.dropped)


def build_export(
    traces: str, exporter: SpanExporter | None, resource: Resource, scope: str
) -> SpanExport:
    if exporter is not None:
        return SyncExport(exporter, resource, scope)
    if traces == "otlp":
        return otlp_export(resource, scope, encoded=False)
    if traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        console = ConsoleSpanExporter(out=sys.stdout)  # the stdout of now, not of import time
        convert = ReadableConverter(resource, scope)

        def show(batch: list[Span]) -> str | None:
            console.export([convert(s) for s in batch])
            return None

        return BatchExport(show, close=console.shutdown)
    raise ValueError(f"unknown telemetry.traces {traces!r}")


def otlp_export(resource: Resource, scope: str, *, encoded: bool) -> BatchExport:
    """OTLP/HTTP export of spans, or (`encoded`) of chunks of `otlp.span_entries` bytes."""
    sender = OtlpHttp()
    header = otlp.resource_header(resource.attributes, scope)
    schema_url = resource.schema_url

    def send(items: list[Any]) -> str | None:
        entries = b"".join(items) if encoded else otlp.span_entries(s.fields() for s in items)
        return sender.send(otlp.export_request(header, entries, schema_url))

    return BatchExport(send, close=sender.close)


class ReadableConverter:
    """Our finished spans as the SDK's `ReadableSpan`s, for SDK span exporters."""

    def __init__(self, resource: Resource, scope: str) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = resource
        self.scope = InstrumentationScope(scope)

    def __call__(self, span: Span) -> ReadableSpan:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        state = TraceState.from_header([span.trace_state]) if span.trace_state else None
        context = SpanContext(
            span.trace_id, span.span_id, False, TraceFlags(TraceFlags.SAMPLED), state
        )
        parent = None
        if span.parent_id:
            parent = SpanContext(
                span.trace_id, span.parent_id, span.parent_remote, TraceFlags(TraceFlags.SAMPLED)
            )
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=dict(span.attributes),
            events=_events(Event, span.events),
            kind=SpanKind.SERVER if span.kind == SERVER else SpanKind.CLIENT,
            status=Status(StatusCode(span.status_code), span.status_message),
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self.scope,
        )


def _events(event: Any, events: Sequence[tuple[str, int, dict[str, Any]]]) -> list:
    return [event(name, attributes, timestamp) for name, timestamp, attributes in events]
