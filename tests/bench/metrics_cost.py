"""What recording one request's metrics costs: the gateway's registry vs prometheus_client.

    python tests/bench/metrics_cost.py

A pass-through request records 5 values (requests, request duration, in-flight up and
down, upstream duration). Prints microseconds per request for: the hand-rolled registry
(proxy.metrics), prometheus_client in one process, and prometheus_client's multiprocess
mode (the library's way to sum workers: every value goes through an mmap'd file), each as
a share of a pass-through request's gateway CPU (deploy/SIZING.md: ~244-324 us).
Median of 7 rounds [min, max]; a loaded machine moves the absolute figures, the order holds.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

N = 50_000
PASS_THROUGH_US = (244.0, 324.0)


def ours() -> callable:
    from proxy.metrics import Metrics

    m = Metrics()

    def record() -> None:
        m.in_flight.add(1)
        m.upstream_duration.observe(0.004, "open")
        m.requests.inc("open", "/v1/chat/completions", "200")
        m.request_duration.observe(0.005, "open", "/v1/chat/completions")
        m.in_flight.add(-1)

    return record


def library() -> callable:
    import prometheus_client as p

    registry = p.CollectorRegistry()
    requests = p.Counter("r", "r", ("route", "endpoint", "status"), registry=registry)
    duration = p.Histogram("d", "d", ("route", "endpoint"), registry=registry)
    upstream = p.Histogram("u", "u", ("route",), registry=registry)
    in_flight = p.Gauge("f", "f", registry=registry, multiprocess_mode="livesum")

    def record() -> None:
        in_flight.inc()
        upstream.labels("open").observe(0.004)
        requests.labels("open", "/v1/chat/completions", "200").inc()
        duration.labels("open", "/v1/chat/completions").observe(0.005)
        in_flight.dec()

    return record


def per_request_us(record: callable) -> float:
    for _ in range(1000):
        record()
    start = time.perf_counter()
    for _ in range(N):
        record()
    return (time.perf_counter() - start) / N * 1e6


def main() -> None:
    variants = {"hand-rolled (proxy.metrics)": ours, "prometheus_client": library}
    results: dict[str, list[float]] = {name: [] for name in variants}
    if "--multiprocess" in sys.argv:  # a child run: the env var must precede the import
        print(statistics.median(per_request_us(library()) for _ in range(7)))
        return
    for _ in range(7):
        for name, make in variants.items():
            results[name].append(per_request_us(make()))
    folder = tempfile.mkdtemp()
    import subprocess

    mp = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, __file__, "--multiprocess"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder},
            capture_output=True,
            text=True,
            check=True,
        )
        mp.append(float(out.stdout.strip()))
    results["prometheus_client multiprocess"] = mp
    low, high = PASS_THROUGH_US
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"{name:34} {med:6.2f} us/request [{min(values):.2f}, {max(values):.2f}]"
            f"  = {med / high * 100:4.1f}-{med / low * 100:4.1f}% of a pass-through request"
        )


if __name__ == "__main__":
    main()
