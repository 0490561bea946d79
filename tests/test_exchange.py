"""The audit record an exchange makes (pure)."""

from __future__ import annotations

from proxy.config import Tenant
from proxy.exchange import Exchange


def test_the_record_rounds_timings_to_the_hundredth_and_keeps_unknowns_unknown():
    ex = Exchange("req_1", "/v1/chat/completions", tenant=Tenant(name="acme", keys=()))
    ex.guard_ms, ex.upstream_ms = 12.3456, 0.004
    timings = ex.record(0.0314159)["timings"]
    assert timings == {
        "classifier_ms": 12.35,
        "upstream_ms": 0.0,
        "total_ms": 31.42,
        "ttft_ms": None,  # no stream: no first token
    }
