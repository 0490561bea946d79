"""Metrics: `/metrics` is strict Prometheus text (checked by a parser written here), the
gateway's instruments record what they say, and OTLP push reaches a loopback receiver."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from proxy.config import Telemetry as TelemetryConfig
from proxy.guard.safeguard import Verdict
from proxy.metrics import CONTENT_TYPE, Metrics, Registry

# -- a strict Prometheus text-format (0.0.4) parser ---------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)$")
VALUE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)|[+-]Inf|NaN)$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> dict[str, Family]:
    """Raises AssertionError on anything a Prometheus server would reject."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, Family] = {}
    seen: set[tuple[str, tuple]] = set()
    current: Family | None = None
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, keyword, name, *rest = line.split(" ", 3)
            assert re.fullmatch(NAME, name), where
            family = families.setdefault(name, Family(name))
            if keyword == "TYPE":
                assert rest and rest[0] in TYPES, where
                assert not family.samples, f"TYPE after samples, {where}"
                family.type = rest[0]
            else:
                assert family.help is None, f"second HELP, {where}"
                family.help = rest[0] if rest else ""
            current = family
            continue
        assert not line.startswith("#") or line.startswith("# "), where
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"bad sample, {where}"
        name, raw_labels, value = match.group(1), match.group(2), match.groups()[-1]
        assert VALUE.match(value), f"bad value, {where}"
        labels = {k: unescape(v) for k, v in re.findall(LABEL, raw_labels or "")}
        assert len(labels) == len(re.findall(LABEL, raw_labels or "")), f"dup label, {where}"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate series, {where}"
        seen.add(key)
        assert current is not None, f"sample before any TYPE, {where}"
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}
        allowed = [current.name + s for s in suffixes.get(current.type, ("",))]
        assert name in allowed, f"{name} outside its family {current.name}, {where}"
        current.samples.append((name, labels, float(value)))
    for family in families.values():
        if family.type == "histogram":
            check_histogram(family)
        if family.type == "counter":
            assert all(v >= 0 for _, _, v in family.samples), family.name
    return families


def check_histogram(family: Family) -> None:
    series: dict[tuple, dict] = {}
    for name, sample_labels, value in family.samples:
        labels = dict(sample_labels)
        le = labels.pop("le", None)
        entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": []})
        if name.endswith("_bucket"):
            assert le is not None, f"{family.name} bucket without le"
            entry["buckets"].append((float(le), value))
        else:
            assert le is None
            entry[name.rsplit("_", 1)[1]] = value
    for key, entry in series.items():
        bounds = [b for b, _ in entry["buckets"]]
        counts = [c for _, c in entry["buckets"]]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), (family.name, key)
        assert bounds and math.isinf(bounds[-1]), f"{family.name}{key}: no +Inf bucket"
        assert counts == sorted(counts), f"{family.name}{key}: buckets not cumulative"
        assert "sum" in entry and "count" in entry, f"{family.name}{key}: no _sum/_count"
        assert entry["count"] == counts[-1], f"{family.name}{key}: _count != +Inf bucket"


def value(families: dict[str, Family], sample: str, **labels: str) -> float:
    family = families[re.sub(r"_(bucket|sum|count)$", "", sample)]
    if family.name == sample or family.type != "histogram":
        family = families[sample]
    hits = [v for n, ls, v in family.samples if n == sample and ls == labels]
    assert len(hits) == 1, (sample, labels, family.samples)
    return hits[0]


# -- tests ------------------------------------------------------------------------------------


def recorded() -> Metrics:
    m = Metrics(TelemetryConfig())
    for status, seconds in (("200", 0.004), ("200", 0.2), ("403", 0.07), ("200", 99.0)):
        m.requests.inc("chat", "/v1/chat/completions", status)
        m.request_duration.observe(seconds, "chat", "/v1/chat/completions")
    m.in_flight.add(1)
    m.upstream_ttft.observe(0.3, "chat")
    m.upstream_duration.observe(0.9, "chat")
    m.upstream_tokens.add(11, "chat", "input")
    m.upstream_tokens.add(7, "chat", "output")
    m.observe_verdict(Verdict("hate", "3", True, latency_ms=120.0), side="input", action="block")
    m.observe_verdict(Verdict("hate", "3", True, cache_hit=True), side="input", action="block")
    m.observe_verdict(
        Verdict("pii", "1", False, latency_ms=30.0, shadow=True), side="output", action="allow"
    )
    m.observe_verdict(
        Verdict("pii", "1", False, source="error", error="timeout: slow", latency_ms=20000.0),
        side="input",
        action="error",
    )
    m.observe_verdict(
        Verdict("secrets", "1", True, source="detector"), side="output", action="redact"
    )
    return m


def test_exposition_is_strict_prometheus_text_with_the_gateway_metrics():
    families = parse(recorded().render().decode())
    assert {name: f.type for name, f in families.items()} == {
        "safeguard_requests_total": "counter",
        "safeguard_request_duration_seconds": "histogram",
        "safeguard_requests_in_flight": "gauge",
        "safeguard_decisions_total": "counter",
        "safeguard_classifier_duration_seconds": "histogram",
        "safeguard_classifier_cache_total": "counter",
        "safeguard_classifier_errors_total": "counter",
        "safeguard_upstream_duration_seconds": "histogram",
        "safeguard_upstream_ttft_seconds": "histogram",
        "safeguard_upstream_tokens_total": "counter",
    }
    assert all(f.help for f in families.values())
    chat = {"route": "chat", "endpoint": "/v1/chat/completions"}
    assert value(families, "safeguard_requests_total", **chat, status="200") == 3
    assert value(families, "safeguard_requests_total", **chat, status="403") == 1
    hist = "safeguard_request_duration_seconds"
    assert value(families, f"{hist}_count", **chat) == 4
    assert value(families, f"{hist}_sum", **chat) == pytest.approx(99.274)
    assert value(families, f"{hist}_bucket", **chat, le="0.005") == 1
    assert value(families, f"{hist}_bucket", **chat, le="0.1") == 2
    assert value(families, f"{hist}_bucket", **chat, le="0.25") == 3
    assert value(families, f"{hist}_bucket", **chat, le="60.0") == 3
    assert value(families, f"{hist}_bucket", **chat, le="+Inf") == 4
    assert value(families, "safeguard_requests_in_flight") == 1
    assert value(families, "safeguard_upstream_tokens_total", route="chat", type="input") == 11


def test_verdicts_feed_decisions_cache_latency_and_errors():
    families = parse(recorded().render().decode())
    decisions = {
        tuple(labels[k] for k in ("policy", "action", "side", "shadow")): v
        for _, labels, v in families["safeguard_decisions_total"].samples
    }
    assert decisions == {
        ("hate", "block", "input", "false"): 2,
        ("pii", "allow", "output", "true"): 1,
        ("pii", "error", "input", "false"): 1,
        ("secrets", "redact", "output", "false"): 1,
    }
    # Detector verdicts never touch the classifier; cache hits are not classifier latency.
    assert value(families, "safeguard_classifier_cache_total", result="hit") == 1
    assert value(families, "safeguard_classifier_cache_total", result="miss") == 3
    latency = "safeguard_classifier_duration_seconds"
    assert value(families, f"{latency}_count", policy="hate") == 1
    assert value(families, f"{latency}_sum", policy="hate") == pytest.approx(0.12)
    assert value(families, f"{latency}_count", policy="pii") == 2
    assert value(families, f"{latency}_bucket", policy="pii", le="30.0") == 2
    errors = "safeguard_classifier_errors_total"
    assert value(families, errors, policy="pii", kind="timeout") == 1


def test_label_values_are_escaped_and_normalised():
    registry = Registry()
    counter = registry.counter("odd_total", "Help with \\ and\nnewline", ("v",))
    counter.inc('quote " back \\ nl \n end')
    counter.inc(200)  # a non-str label value is the same series as its str()
    counter.inc("200")
    families = parse(registry.render().decode())
    assert value(families, "odd_total", v='quote " back \\ nl \n end') == 1
    assert value(families, "odd_total", v="200") == 2
    assert counter.value("200") == 2
    with pytest.raises(ValueError, match="labels"):
        counter.inc("a", "b")
    with pytest.raises(ValueError, match="twice"):
        registry.counter("odd_total", "again")


def test_empty_registry_and_unused_metrics_still_parse():
    assert parse(Metrics().render().decode())["safeguard_requests_total"].samples == []
    assert Registry().render() == b""


def test_callbacks_are_read_at_scrape_time_and_failures_are_contained():
    registry = Registry()
    spilled = {"n": 0}
    registry.callback(
        "safeguard_audit_spilled_total", "counter", "Audit records spilled", lambda: spilled["n"]
    )
    registry.callback(
        "safeguard_audit_queue_depth",
        "gauge",
        "Audit queue depth by writer",
        lambda: {("sqlite",): 3, ("spill",): 0},
        ("writer",),
    )
    registry.callback("broken", "gauge", "Raises", lambda: 1 / 0)
    spilled["n"] = 5
    families = parse(registry.render().decode())
    assert value(families, "safeguard_audit_spilled_total") == 5
    assert value(families, "safeguard_audit_queue_depth", writer="sqlite") == 3
    assert families["broken"].samples == []
    with pytest.raises(ValueError, match="kind"):
        registry.callback("x", "histogram", "no", lambda: 0)


def test_audit_health_is_read_from_the_writer_stats():
    m = Metrics()
    stats = {"queued": 4, "written": 10, "batches": 2, "spilled": 3, "errors": 1}
    stats |= {"dropped": 0, "degraded": True}
    m.watch_audit(lambda: stats)
    stats["spilled"] = 7
    families = parse(m.render().decode())
    assert value(families, "safeguard_audit_spilled_total") == 7
    assert value(families, "safeguard_audit_written_total") == 10
    assert value(families, "safeguard_audit_dropped_total") == 0
    assert value(families, "safeguard_audit_queued") == 4
    assert value(families, "safeguard_audit_degraded") == 1
    assert families["safeguard_audit_errors_total"].type == "counter"


async def test_asgi_endpoint_serves_prometheus_text():
    m = recorded()
    transport = httpx.ASGITransport(app=m.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert "safeguard_requests_total" in parse(response.text)
        post = await client.post("/metrics")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        head = await client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
    off = Metrics(TelemetryConfig(metrics="none"))
    transport = httpx.ASGITransport(app=off.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        assert (await client.get("/metrics")).status_code == 404


# -- OTLP push to a loopback receiver -----------------------------------------------------------


def test_otlp_push_reaches_a_loopback_receiver(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    m = Metrics(TelemetryConfig(metrics="otlp", service_name="gw-metrics"), interval_s=0.05)
    m.requests.inc("chat", "/v1/chat/completions", "200")
    m.request_duration.observe(0.2, "chat", "/v1/chat/completions")
    m.request_duration.observe(3.0, "chat", "/v1/chat/completions")
    m.in_flight.set(2)
    m.start()
    assert receiver.got.wait(10), "the push thread sent nothing"
    m.shutdown()  # one last push with the final values

    path, _, body = receiver.posts[-1]
    assert path == "/v1/metrics"
    request = ExportMetricsServiceRequest.FromString(body)
    (rm,) = request.resource_metrics
    resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
    assert resource["service.name"] == "gw-metrics"
    metrics = {metric.name: metric for sm in rm.scope_metrics for metric in sm.metrics}
    assert set(metrics) == {
        "safeguard_requests",
        "safeguard_request_duration_seconds",
        "safeguard_requests_in_flight",
    }
    requests = metrics["safeguard_requests"].sum
    assert requests.is_monotonic
    assert requests.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = requests.data_points
    assert point.as_double == 1
    assert {kv.key: kv.value.string_value for kv in point.attributes} == {
        "route": "chat",
        "endpoint": "/v1/chat/completions",
        "status": "200",
    }
    duration = metrics["safeguard_request_duration_seconds"]
    assert duration.unit == "s"
    (hp,) = duration.histogram.data_points
    assert hp.count == 2 and hp.sum == pytest.approx(3.2)
    assert list(hp.explicit_bounds) == [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
    ]  # fmt: skip
    assert list(hp.bucket_counts) == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert hp.start_time_unix_nano <= hp.time_unix_nano
    (gauge_point,) = metrics["safeguard_requests_in_flight"].gauge.data_points
    assert gauge_point.as_double == 2


@pytest.mark.parametrize(
    "bad",
    [
        "x_total 1\n",  # no TYPE
        "# TYPE x counter\nx 1",  # no final newline
        '# TYPE x counter\nx{a="1"} 1\nx{a="1"} 2\n',  # duplicate series
        "# TYPE x counter\nx{a=1} 1\n",  # unquoted label value
        '# TYPE h histogram\nh_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\n'
        "h_sum 1\nh_count 1\n",  # not cumulative
        '# TYPE h histogram\nh_bucket{le="1.0"} 1\nh_sum 1\nh_count 1\n',  # no +Inf
        '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n',  # count mismatch
        "# TYPE x counter\ny 1\n",  # sample outside its family
    ],
)
def test_the_parser_rejects_what_prometheus_rejects(bad):
    with pytest.raises(AssertionError):
        parse(bad)
