"""Span export settings: OTEL_BSP_* batching, OTLP/HTTP compression and retries, console."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator

import pytest

from proxy.config import Telemetry as TelemetryConfig
from proxy.span_export import BatchExport, OtlpHttp
from proxy.telemetry import Telemetry
from tests.fakes.collector import Collector


def filled(monkeypatch, **settings: str) -> tuple[BatchExport, list[list[str]]]:
    """A BatchExport with these OTEL_BSP_* settings (no timed export), given "a".."e"."""
    for name, value in {"SCHEDULE_DELAY": "60000", **settings}.items():
        monkeypatch.setenv(f"OTEL_BSP_{name}", value)
    batches: list[list[str]] = []
    export = BatchExport(lambda items: batches.append(list(items)))
    for name in "abcde":
        export.add(name)
    return export, batches


def test_a_full_queue_drops_what_does_not_fit(monkeypatch):
    export, batches = filled(monkeypatch, MAX_QUEUE_SIZE="2")
    assert export.dropped == 3
    export.shutdown()  # exports what is queued
    assert batches == [["a", "b"]] and export.exported == 2


def test_batches_hold_at_most_the_batch_size_and_chunks_count_their_spans(monkeypatch):
    export, batches = filled(monkeypatch, MAX_EXPORT_BATCH_SIZE="2")
    export.add("chunk of 3", 3)  # a recorder chunk: counted as its spans
    export.shutdown()
    assert [item for batch in batches for item in batch] == [*"abcde", "chunk of 3"]
    assert all(len(batch) <= 2 for batch in batches)
    assert export.exported == 8


def test_a_failed_export_counts_its_spans_as_failed(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    sent: list[list[str]] = []
    export = BatchExport(lambda items: sent.append(list(items)) or "HTTP 400")
    export.add("a")
    export.add("chunk of 3", 3)
    export.shutdown()
    assert sent == [["a", "chunk of 3"]]
    assert (export.failed, export.exported) == (4, 0)


@pytest.fixture
def collector_for(monkeypatch) -> Iterator:
    started: list[Collector] = []

    def start(*statuses: int) -> Collector:
        collector = Collector(statuses)
        started.append(collector)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        return collector

    yield start
    for collector in started:
        collector.close()


def test_gzip_compression_is_sent_and_declared(collector_for, monkeypatch):
    collector = collector_for()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert OtlpHttp().send(b"spans" * 100) is None
    ((_, headers, body),) = collector.posts
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b"spans" * 100


def test_a_busy_collector_is_retried_and_a_broken_one_is_not(collector_for):
    collector = collector_for(503)
    assert OtlpHttp().send(b"x") is None
    assert len(collector.posts) == 2  # 503, then 200
    collector = collector_for(400)
    assert OtlpHttp().send(b"x") == "HTTP 400"
    assert len(collector.posts) == 1


def test_retries_stop_at_the_timeout(collector_for, monkeypatch):
    collector = collector_for(*[503] * 50)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    started = time.monotonic()
    assert OtlpHttp().send(b"x") == "HTTP 503"
    assert time.monotonic() - started < 2 and len(collector.posts) >= 2


def test_console_traces_print_spans(capsys):
    tel = Telemetry(TelemetryConfig(traces="console", service_name="gw-console"))
    with tel.server_span("GET", "/v1/models", []):
        pass
    tel.shutdown()
    out = capsys.readouterr().out
    assert '"name": "GET /v1/models"' in out and "gw-console" in out
