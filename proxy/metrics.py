"""In-process metrics: Prometheus text on `GET /metrics`, optional OTLP push.

A hand-rolled registry, because the hot path records ~6 values per request: a series is
a list cell in a dict keyed by the label-value tuple, so a record is one dict lookup and
one or two in-place adds (~0.2 us; the OTel metrics SDK costs ~7 us per record here).
Rendering and OTLP conversion happen only on scrape/push.

Re-measured against prometheus_client 0.26 (`python tests/bench/metrics_cost.py`, a
pass-through request's five records, median of 7 rounds on a loaded 2-core VM): this
registry 3.5 us a request [2.8-4.9], prometheus_client 24 us [18-27] (7-10% of a
pass-through request's ~244-324 us of gateway CPU), its multiprocess mode 27 us [22-27]
(8-11%). Over the ~5% bar, so the registry stays; workers are summed at scrape time
instead (`snapshot`/`merge`, proxy.fleet), which costs the request path nothing.

    m = Metrics(cfg.telemetry)
    m.requests.inc(route, "/v1/chat/completions", "200")   # labels positional, as str
    m.request_duration.observe(0.042, route, "/v1/chat/completions")
    m.observe_verdict(verdict, side="input", action="block")
    m.watch_audit(audit_log.stats)         # safeguard_audit_* read at scrape time
    body = m.render()                      # bytes, media type CONTENT_TYPE
    m.start(); ...; m.shutdown()           # OTLP pusher thread when metrics == "otlp"

Records are meant for the event-loop thread. Another thread should expose its own
numbers through `registry.callback` (read at scrape/push) rather than record directly:
an unlocked `+=` from two threads can lose an increment.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import export as otlp
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from proxy.telemetry import build_resource

if TYPE_CHECKING:
    from proxy.config import Telemetry as TelemetryConfig
    from proxy.guard.safeguard import Verdict

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

Labels = tuple[str, ...]
CallbackResult = float | Mapping[Labels, float]


def _fmt(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape(value: str) -> str:
    return _escape_help(value).replace('"', '\\"')


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._index: dict[tuple, list] = {}  # any key seen (maybe non-str) -> cell
        self._series: dict[Labels, list] = {}  # normalised key -> the same cell

    def _new_cell(self) -> list:
        return [0.0]

    def _cell(self, labels: tuple) -> list:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")
        key = tuple(str(v) for v in labels)
        cell = self._series.get(key)
        if cell is None:
            cell = self._series[key] = self._new_cell()
        self._index[labels] = cell
        return cell

    def snapshot(self) -> list[tuple[Labels, list]]:
        # dict.copy and list slicing are atomic under the GIL: safe from a push thread.
        return [(k, cell[:]) for k, cell in self._series.copy().items()]

    def header(self) -> str:
        return f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"

    def render(self, out: list[str], rows: list[tuple[Labels, list]] | None = None) -> None:
        out.append(self.header())
        for key, cell in self.snapshot() if rows is None else rows:
            out.append(f"{self.name}{_label_text(self.labelnames, key)} {_fmt(cell[0])}\n")


class Counter(_Metric):
    kind = "counter"

    def inc(self, *labels: str) -> None:
        cell = self._index.get(labels) or self._cell(labels)
        cell[0] += 1

    def add(self, amount: float, *labels: str) -> None:
        cell = self._index.get(labels) or self._cell(labels)
        cell[0] += amount

    def value(self, *labels: str) -> float:
        cell = self._series.get(tuple(str(v) for v in labels))
        return cell[0] if cell else 0.0


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        cell = self._index.get(labels) or self._cell(labels)
        cell[0] = value


class Histogram(_Metric):
    """Fixed buckets; a cell is [count per bucket (non-cumulative)..., +Inf count, sum]."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))

    def _new_cell(self) -> list:
        return [0] * (len(self.bounds) + 1) + [0.0]

    def observe(self, value: float, *labels: str) -> None:
        cell = self._index.get(labels) or self._cell(labels)
        cell[bisect_left(self.bounds, value)] += 1  # le semantics: value <= bound
        cell[-1] += value

    def render(self, out: list[str], rows: list[tuple[Labels, list]] | None = None) -> None:
        out.append(self.header())
        names = self.labelnames
        for key, cell in self.snapshot() if rows is None else rows:
            running = 0
            for bound, n in zip(self.bounds, cell, strict=False):
                running += n
                le = _label_text(names, key, f'le="{bound!r}"')
                out.append(f"{self.name}_bucket{le} {running}\n")
            running += cell[-2]
            le = _label_text(names, key, 'le="+Inf"')
            out.append(f"{self.name}_bucket{le} {running}\n")
            plain = _label_text(names, key)
            out.append(f"{self.name}_sum{plain} {_fmt(cell[-1])}\n")
            out.append(f"{self.name}_count{plain} {running}\n")


class CallbackMetric(_Metric):
    """A counter or gauge whose values a function returns at scrape/push time."""

    def __init__(
        self,
        name: str,
        kind: str,
        help: str,
        fn: Callable[[], CallbackResult],
        labelnames: Sequence[str] = (),
    ) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"callback metric kind must be counter or gauge, not {kind!r}")
        super().__init__(name, help, labelnames)
        self.kind = kind
        self.fn = fn

    def snapshot(self) -> list[tuple[Labels, list]]:
        try:
            result = self.fn()
        except Exception:
            log.exception("metrics callback %s failed", self.name)
            return []
        if isinstance(result, Mapping):
            return [(tuple(str(v) for v in k), [float(v)]) for k, v in result.items()]
        return [((), [float(result)])]


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}
        self.start_time_ns = time.time_ns()

    def _add(self, metric: _Metric) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets))

    def callback(
        self,
        name: str,
        kind: str,
        help: str,
        fn: Callable[[], CallbackResult],
        labelnames: Sequence[str] = (),
    ) -> CallbackMetric:
        return self._add(CallbackMetric(name, kind, help, fn, labelnames))

    def render(self, snapshot: Snapshot | None = None) -> bytes:
        """The Prometheus text of this registry, or of `snapshot` (e.g. a fleet's sum)."""
        out: list[str] = []
        for metric in self.metrics.values():
            metric.render(out, None if snapshot is None else snapshot.get(metric.name, []))
        return "".join(out).encode()

    def snapshot(self) -> Snapshot:
        """Every series' values now (callbacks read), for summing across processes."""
        return {name: metric.snapshot() for name, metric in self.metrics.items()}


# metric name -> [(label values, cell)]; a cell is a counter/gauge value or histogram buckets
Snapshot = dict[str, list[tuple[Labels, list]]]


def merge(snapshots: Sequence[Snapshot]) -> Snapshot:
    """The element-wise sum of several processes' snapshots: every worker's counters and
    histogram buckets added up, gauges (in flight, queued) as the fleet's total."""
    total: dict[str, dict[Labels, list]] = {}
    for snapshot in snapshots:
        for name, rows in snapshot.items():
            series = total.setdefault(name, {})
            for labels, cell in rows:
                key = tuple(labels)
                if (mine := series.get(key)) is None:
                    series[key] = list(cell)
                else:
                    series[key] = [a + b for a, b in zip(mine, cell, strict=True)]
    return {name: sorted(series.items()) for name, series in total.items()}


class Metrics:
    """The gateway's instruments (names are the public contract of `/metrics`)."""

    def __init__(
        self,
        config: TelemetryConfig | None = None,
        *,
        exporter: otlp.MetricExporter | None = None,
        resource: Resource | None = None,
        interval_s: float | None = None,
    ) -> None:
        mode = config.metrics if config is not None else "prometheus"
        self.exposed = mode != "none"  # serve GET /metrics
        self.registry = r = Registry()
        self.requests = r.counter(
            "safeguard_requests_total", "Requests answered", ("route", "endpoint", "status")
        )
        self.request_duration = r.histogram(
            "safeguard_request_duration_seconds",
            "Request duration, arrival to last byte",
            ("route", "endpoint"),
        )
        self.in_flight = r.gauge("safeguard_requests_in_flight", "Requests being served")
        self.decisions = r.counter(
            "safeguard_decisions_total",
            "Policy decisions (action: allow|annotate|redact|block|log|error)",
            ("policy", "action", "side", "shadow"),
        )
        self.classifier_duration = r.histogram(
            "safeguard_classifier_duration_seconds",
            "Classifier call latency (cache misses only)",
            ("policy",),
        )
        self.classifier_cache = r.counter(
            "safeguard_classifier_cache_total", "Verdict cache lookups", ("result",)
        )
        self.classifier_errors = r.counter(
            "safeguard_classifier_errors_total", "Classifier failures", ("policy", "kind")
        )
        self.upstream_duration = r.histogram(
            "safeguard_upstream_duration_seconds", "Upstream call duration", ("route",)
        )
        self.upstream_ttft = r.histogram(
            "safeguard_upstream_ttft_seconds",
            "Upstream time to first token (streams)",
            ("route",),
            TTFT_BUCKETS,
        )
        self.upstream_tokens = r.counter(
            "safeguard_upstream_tokens_total", "Upstream token usage", ("route", "type")
        )
        self._counted: dict[tuple[str, str, str, bool, bool], tuple[list, ...]] = {}
        self._pusher: _OtlpPusher | None = None
        if mode == "otlp" or exporter is not None:
            self._pusher = _OtlpPusher(self.registry, exporter, resource, config, interval_s)

    def watch_audit(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Audit writer health, read at scrape time from `AuditLog.stats()`."""
        self._watch("safeguard_audit_", stats, (
            ("written", "counter", "Audit records stored"),
            ("spilled", "counter", "Audit records spilled to the JSON-lines file"),
            ("dropped", "counter", "Audit records lost (spill file unwritable too)"),
            ("errors", "counter", "Audit store write errors"),
            ("queued", "gauge", "Audit records waiting for the writer"),
            ("degraded", "gauge", "1 while the audit store is failing"),
        ))  # fmt: skip

    def watch_spans(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Span export outcomes, read at scrape time from `Recorder.span_stats()`."""
        self._watch("safeguard_spans_", stats, (
            ("exported", "counter", "Spans the OTLP collector accepted"),
            ("failed", "counter", "Spans lost to failed OTLP exports (after retries)"),
            ("dropped", "counter", "Spans dropped because the export queue was full"),
        ))  # fmt: skip

    def watch_shared_cache(self, cache: Any) -> None:
        """The shared verdict cache's lookups and health, read at scrape time."""
        self.registry.callback(
            "safeguard_shared_cache_total",
            "counter",
            "Shared verdict cache (Redis/Valkey) lookups and writes (result: hit|miss|error|write)",
            lambda: {(k,): v for k, v in cache.stats().items()},
            ("result",),
        )
        self.registry.callback(
            "safeguard_shared_cache_up",
            "gauge",
            "1 while the shared verdict cache is in use, 0 while degraded to the local cache",
            lambda: 1.0 if cache.up else 0.0,
        )

    def _watch(
        self,
        prefix: str,
        stats: Callable[[], Mapping[str, Any]],
        rows: tuple[tuple[str, str, str], ...],
    ) -> None:
        for key, kind, help in rows:
            suffix = "_total" if kind == "counter" else ""
            self.registry.callback(
                f"{prefix}{key}{suffix}", kind, help, lambda k=key: float(stats()[k])
            )

    def observe_verdict(self, verdict: Verdict, side: str, action: str) -> None:
        """decisions, classifier latency, cache hit/miss and errors for one verdict."""
        if verdict.cache_hit or verdict.source == "detector":  # counts only: cells kept
            key = (verdict.policy_id, action, side, verdict.shadow, verdict.cache_hit)
            cells = self._counted.get(key) or self._count_cells(key)
            for cell in cells:
                cell[0] += 1
            return
        policy = verdict.policy_id
        self.decisions.inc(policy, action, side, "true" if verdict.shadow else "false")
        if verdict.source == "detector":
            return
        if verdict.cache_hit:
            self.classifier_cache.inc("hit")
            return
        self.classifier_cache.inc("miss")
        self.classifier_duration.observe(verdict.latency_ms / 1000.0, policy)
        if verdict.error:
            self.classifier_errors.inc(policy, verdict.error.split(":", 1)[0])

    def _count_cells(self, key: tuple[str, str, str, bool, bool]) -> tuple[list, ...]:
        """The cells a cache hit (decision, hit) or a detector verdict (decision) adds one
        to, found once per label set: the guarded hot path's metrics are two adds."""
        policy, action, side, shadow, hit = key
        decided = self.decisions._cell((policy, action, side, "true" if shadow else "false"))
        cells = (decided, self.classifier_cache._cell(("hit",))) if hit else (decided,)
        self._counted[key] = cells
        return cells

    def render(self) -> bytes:
        return self.registry.render()

    # Under server.workers > 1: an async function returning every worker's summed snapshot
    # (proxy.fleet); /metrics then renders that instead of this process's registry.
    gather: Callable[[], Awaitable[Snapshot]] | None = None

    async def asgi(self, scope: dict, receive: Any, send: Any) -> None:
        """A bare ASGI app for `GET /metrics` (404 when metrics are `none`)."""
        if scope["type"] != "http":
            return
        status, body = 200, b""
        if not self.exposed:
            status, body = 404, b"metrics disabled\n"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif self.gather is not None:
            body = self.registry.render(await self.gather())
        else:
            body = self.render()
        content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def start(self) -> None:
        """Start the OTLP push thread (no-op unless metrics == otlp); call after fork."""
        if self._pusher is not None:
            self._pusher.start()

    def shutdown(self) -> None:
        """Final push and exporter shutdown; safe to call twice."""
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.shutdown()


# -- OTLP --------------------------------------------------------------------------------


def _otlp_name(name: str) -> tuple[str, str]:
    """(OTLP name, unit): drop the Prometheus `_total` suffix; `_seconds` means unit s."""
    base = name.removesuffix("_total")
    return base, ("s" if base.endswith("_seconds") else "1")


def to_metrics_data(registry: Registry, resource: Resource) -> otlp.MetricsData:
    """Cumulative OTLP data points for everything in the registry, as of now."""
    cumulative = otlp.AggregationTemporality.CUMULATIVE
    start, now = registry.start_time_ns, time.time_ns()
    metrics = []
    for m in registry.metrics.values():
        name, unit = _otlp_name(m.name)
        rows = m.snapshot()
        if isinstance(m, Histogram):
            points = [
                otlp.HistogramDataPoint(
                    attributes=dict(zip(m.labelnames, key, strict=True)),
                    start_time_unix_nano=start,
                    time_unix_nano=now,
                    count=sum(cell[:-1]),
                    sum=cell[-1],
                    bucket_counts=cell[:-1],
                    explicit_bounds=list(m.bounds),
                    min=None,  # type: ignore[arg-type]  # not tracked (optional in OTLP)
                    max=None,  # type: ignore[arg-type]
                )
                for key, cell in rows
            ]
            data: Any = otlp.Histogram(data_points=points, aggregation_temporality=cumulative)
        else:
            points = [
                otlp.NumberDataPoint(
                    attributes=dict(zip(m.labelnames, key, strict=True)),
                    start_time_unix_nano=start,
                    time_unix_nano=now,
                    value=float(cell[0]),
                )
                for key, cell in rows
            ]
            if m.kind == "counter":
                data = otlp.Sum(
                    data_points=points, aggregation_temporality=cumulative, is_monotonic=True
                )
            else:
                data = otlp.Gauge(data_points=points)
        if points:
            metrics.append(otlp.Metric(name=name, description=m.help, unit=unit, data=data))
    scope = otlp.ScopeMetrics(
        scope=InstrumentationScope("safeguard-gateway"), metrics=metrics, schema_url=""
    )
    rm = otlp.ResourceMetrics(resource=resource, scope_metrics=[scope], schema_url="")
    return otlp.MetricsData(resource_metrics=[rm])


class _OtlpPusher:
    """A daemon thread exporting the registry every interval (OTEL_METRIC_EXPORT_INTERVAL)."""

    def __init__(
        self,
        registry: Registry,
        exporter: otlp.MetricExporter | None,
        resource: Resource | None,
        config: TelemetryConfig | None,
        interval_s: float | None,
    ) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http import metric_exporter

            exporter = metric_exporter.OTLPMetricExporter()
        if resource is None:
            resource = build_resource(config.service_name if config else "safeguard-gateway")
        if interval_s is None:
            interval_s = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000
        self.registry, self.exporter, self.resource = registry, exporter, resource
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-otlp", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def push(self) -> bool:
        with self._lock:
            try:
                result = self.exporter.export(to_metrics_data(self.registry, self.resource))
            except Exception:
                log.exception("OTLP metrics export failed")
                return False
        return result is otlp.MetricExportResult.SUCCESS

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self.push()
        self.exporter.shutdown()
