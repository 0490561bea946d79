"""Spans as plain records: W3C trace context, head sampling, the current span.

A `Span` is what the gateway records per request and per call (~3 us to make one; the OTel
SDK's spans cost ~45 us). proxy.telemetry builds them; proxy.otlp encodes them;
proxy.span_export turns them into SDK `ReadableSpan`s for SDK exporters. The sampler and
the traceparent parser follow the OTel SDK and the W3C Trace Context spec.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanContext, TraceFlags

if TYPE_CHECKING:
    from proxy.otlp import SpanFields

log = logging.getLogger("proxy.telemetry")

SERVER, CLIENT = 2, 3  # OTLP SpanKind
UNSET, OK, ERROR = 0, 1, 2  # OTLP StatusCode
LOW64 = (1 << 64) - 1
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE_MAX = 512


# -- sampling and W3C trace context (pure) -----------------------------------------------------


def sampler_from_env(sample_ratio: float) -> tuple[bool, int]:
    """(parent-based?, bound): a trace is sampled when its low 64 bits are below `bound`,
    which is how the SDK's TraceIdRatioBased decides. OTEL_TRACES_SAMPLER(_ARG) wins
    over `telemetry.sample_ratio`."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    ratio = sample_ratio
    if not name:
        name = "parentbased_traceidratio"
    elif name.endswith("traceidratio"):
        ratio = _ratio_arg(os.environ.get("OTEL_TRACES_SAMPLER_ARG"))
    parent_based = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    if root == "always_on":
        ratio = 1.0
    elif root == "always_off":
        ratio = 0.0
    elif root != "traceidratio":
        log.warning("OTEL_TRACES_SAMPLER %r is not supported; using parentbased_always_on", name)
        parent_based, ratio = True, 1.0
    return parent_based, round(ratio * (LOW64 + 1))


def _ratio_arg(raw: str | None) -> float:
    try:
        ratio = float(raw) if raw is not None else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("OTEL_TRACES_SAMPLER_ARG %r is not a ratio in [0, 1]; using 1.0", raw)
        return 1.0
    return ratio


def parse_traceparent(traceparent: str, tracestate: str = "") -> tuple[int, int, bool, str] | None:
    """(trace id, parent span id, sampled, tracestate) of a valid W3C header, else None."""
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = tracestate.strip()
    if len(state) > _TRACESTATE_MAX or not state.isprintable():
        state = ""
    return trace_id, span_id, bool(int(flags, 16) & 1), state


def new_id(bits: int) -> int:
    while not (value := random.getrandbits(bits)):
        pass
    return value


# -- spans -------------------------------------------------------------------------------------


class Span:
    """A recording span: what proxy.otlp encodes, with the OTel `Span` methods we use."""

    __slots__ = (
        "_finish",
        "attributes",
        "end_ns",
        "events",
        "kind",
        "name",
        "parent_id",
        "parent_remote",
        "span_id",
        "start_ns",
        "status_code",
        "status_message",
        "trace_id",
        "trace_state",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: int,
        trace_id: int,
        parent_id: int,
        parent_remote: bool,
        trace_state: str,
        attributes: dict[str, Any],
        finish: Callable[[Span], None] | None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = new_id(64)
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.trace_state = trace_state
        self.attributes = attributes
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.status_code = UNSET
        self.status_message: str | None = None
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self._finish = finish

    sampled = True

    def is_recording(self) -> bool:
        return self.end_ns == 0

    # Changes to an ended span are ignored (as the SDK does): an exporter may be reading it.
    def set_attribute(self, key: str, value: Any) -> None:
        if not self.end_ns:
            self.attributes[key] = value

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        if not self.end_ns:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        if not self.end_ns:
            self.events.append((name, time.time_ns(), attributes or {}))

    def set_status(self, code: int, message: str | None = None) -> None:
        if not self.end_ns:
            self.status_code = code
            self.status_message = message if code == ERROR else None

    def record_exception(self, exc: BaseException) -> None:
        self.add_event(
            "exception",
            {
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc),
                "exception.stacktrace": "".join(traceback.format_exception(exc)),
            },
        )

    def end(self) -> None:
        if self.end_ns == 0:
            self.end_ns = time.time_ns()
            if self._finish is not None:
                self._finish(self)

    def fields(self) -> SpanFields:
        """What proxy.otlp encodes (and what crosses to the recorder process)."""
        return (
            self.name, self.kind, self.trace_id, self.span_id, self.parent_id,
            self.parent_remote, self.trace_state, self.start_ns, self.end_ns, self.attributes,
            self.events, self.status_code, self.status_message,
        )  # fmt: skip

    def traceparent(self) -> str:
        trace_id, span_id = self.trace_id.to_bytes(16, "big"), self.span_id.to_bytes(8, "big")
        return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if self.sampled else '00'}"

    def get_span_context(self) -> SpanContext:
        flags = TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT)
        return SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=flags)

    context = property(get_span_context)


class UnsampledSpan(Span):
    """A sampled-out span: carries the trace context on to the upstream, records nothing.
    It holds only its ids and trace state; everything that would read the rest checks
    `is_recording()` first."""

    __slots__ = ()

    sampled = False

    def __init__(self, trace_id: int, trace_state: str) -> None:
        self.trace_id = trace_id
        self.span_id = new_id(64)
        self.trace_state = trace_state

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def set_status(self, code: int, message: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass


current: ContextVar[Span | None] = ContextVar("safeguard_span", default=None)


class Active:
    """Makes a span current for a `with` block and ends it after; an exception escaping
    the block is recorded on it and marks it an error (as the SDK's tracer does)."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self._token = current.set(self.span)
        return self.span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        current.reset(self._token)
        if isinstance(exc, Exception) and self.span.is_recording():
            self.span.record_exception(exc)
            self.span.set_status(ERROR, f"{type(exc).__name__}: {exc}")
        self.span.end()


class Within:
    """A child of a sampled-out span: yields that span, records nothing."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, *exc: object) -> None:
        return None
