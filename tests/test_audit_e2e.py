"""Audit records as the gateway writes them, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from proxy.exchange import Exchange
from proxy.handler import ProxyHandler
from tests.conftest import (
    ADMIN_KEY,
    KEY,
    UPSTREAM_KEY,
    audit_records,
    start_gateway_process,
    write_config_file,
)
from tests.test_guard import GUARDED, chat

RECORD_FIELDS = {
    "request_id",
    "client_request_id",
    "time",
    "tenant",
    "route",
    "endpoint",
    "model",
    "stream",
    "decision",
    "status",
    "error",
    "verdicts",
    "timings",
    "content",
    "trace_id",  # the request's trace (None when not traced): the review console links it
}
VERDICT_FIELDS = {
    "policy",
    "version",
    "label",
    "category",
    "rationale",
    "reasoning",
    "source",
    "cache_hit",
    "latency_ms",
    "error",
    "shadow",
    "side",
    "action",
    "choice",
}


def test_records_for_allowed_blocked_redacted_and_failed(make_gateway, classifier, caplog):
    caplog.set_level(logging.DEBUG)
    gw = make_gateway(guarded=GUARDED)
    allowed = chat(gw, "guarded-1", "hello")
    with pytest.raises(openai.BadRequestError):
        chat(gw, "guarded-1", "an aimbot")
    redacted = chat(gw, "guarded-1", "mail me at jo@example.org")
    classifier[0].mode = "error500"
    with pytest.raises(openai.InternalServerError):
        chat(gw, "guarded-1", "something new")
    records = audit_records(gw, 4)
    assert [r["decision"] for r in records] == ["allow", "block", "redact", "error"]
    assert [r["status"] for r in records] == [200, 400, 200, 503]
    assert records[0]["request_id"] == allowed.headers["x-request-id"]
    assert records[2]["request_id"] == redacted.headers["x-request-id"]
    for record in records:
        assert set(record) == RECORD_FIELDS
        assert record["tenant"] == "acme" and record["route"] == "guarded"
        assert record["endpoint"] == "/v1/chat/completions" and record["model"] == "guarded-1"
        for verdict in record["verdicts"]:
            assert set(verdict) == VERDICT_FIELDS
            assert verdict["version"] == gw.gateway.policies[verdict["policy"]].version
    blocked = {v["policy"]: v for v in records[1]["verdicts"]}["cheating"]
    assert blocked["label"] == "violation" and blocked["category"] == "CH2"
    assert blocked["reasoning"] and blocked["rationale"]
    assert records[2]["content"]["input"] == "[user] mail me at jo@example.org"  # content: full
    assert records[3]["error"] == "guard_unavailable"
    timings = records[0]["timings"]
    assert timings["total_ms"] >= timings["upstream_ms"] > 0 and timings["classifier_ms"] > 0
    # secrets are never stored or logged
    data = b"".join(p.read_bytes() for p in Path(gw.config.audit.path).parent.glob("audit.db*"))
    logs = caplog.text
    for secret in (KEY, UPSTREAM_KEY, ADMIN_KEY):
        assert secret.encode() not in data
        assert secret not in logs


def test_hash_retention_stores_no_text(make_gateway):
    gw = make_gateway(guarded=GUARDED, raw={"audit": {"content": "hash"}})
    chat(gw, "guarded-1", "say: the-unique-prompt-42 and nothing else")
    [record] = audit_records(gw)
    assert record["content"]["input"].startswith("sha256:")
    data = b"".join(p.read_bytes() for p in Path(gw.config.audit.path).parent.glob("audit.db*"))
    assert b"the-unique-prompt-42" not in data


def test_redacted_retention_stores_the_redacted_text(make_gateway):
    gw = make_gateway(guarded=GUARDED, raw={"audit": {"content": "redacted"}})
    chat(gw, "guarded-1", "mail me at jo@example.org")
    [record] = audit_records(gw)
    assert record["content"]["input"] == "[user] mail me at [REDACTED:EMAIL]"
    assert "jo@example.org" not in record["content"]["output"]


def test_admin_audit_endpoint_pages_records(make_gateway):
    gw = make_gateway(guarded=GUARDED)
    for i in range(3):
        chat(gw, "guarded-1", f"hello {i}")
    audit_records(gw, 3)
    assert httpx.get(gw.url + "/admin/audit").status_code == 401
    page = httpx.get(
        gw.url + "/admin/audit",
        params={"limit": 2},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    rest = httpx.get(
        gw.url + "/admin/audit",
        params={"limit": 2, "offset": page["next_offset"]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    ids = {r["request_id"] for r in page["data"] + rest["data"]}
    assert len(ids) == 3 and rest["has_more"] is False


def test_sigterm_drains_in_flight_requests_into_the_audit_log(upstream, classifier, tmp_path):
    """200 requests in flight, SIGTERM: every response a client got has its audit record."""
    ids = sigterm_with_in_flight(upstream, classifier, tmp_path, 200)
    from proxy.audit_store import query

    stored = {r["request_id"] for r in query(str(tmp_path / "audit.db"), limit=None)}
    assert ids <= stored


def sigterm_with_in_flight(upstream, classifier, tmp_path, n: int, **changes) -> set[str]:
    """A gateway process with `n` requests in flight gets SIGTERM; every request must have
    been answered 200 (the drain). Returns their request ids."""
    path = write_config_file(
        tmp_path,
        upstream,
        classifier,
        **{"upstreams.main.timeout_s": 30, "audit.content": "none", **changes},
    )
    proc, base = start_gateway_process(path)
    try:
        upstream[0].first_token_delay_s = 1.0
        responses = asyncio.run(_fire_and_terminate(base, proc, upstream[0], n))
        # uvicorn re-raises SIGTERM once it has drained, so the exit status says SIGTERM
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    ok = [r for r in responses if isinstance(r, httpx.Response)]
    assert len(ok) == n and all(r.status_code == 200 for r in ok)
    return {r.headers["x-request-id"] for r in ok}


async def _fire_and_terminate(base, proc, fake_upstream, n):
    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def one(i):
            return await client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}"},
                json={
                    "model": "guarded-x",
                    "messages": [{"role": "user", "content": f"request {i}"}],
                },
            )

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        deadline = time.monotonic() + 20
        while len(fake_upstream.requests) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(fake_upstream.requests) == n  # all 200 are inside the gateway now
        proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks, return_exceptions=True)


def test_no_audit_record_is_made_when_audit_is_off(make_gateway, monkeypatch):
    made, shadowed = [], []
    monkeypatch.setattr(Exchange, "record", lambda ex, total_s: made.append(ex) or {})
    finish_shadows = ProxyHandler._audit_later

    async def audit_later(handler, ex, total_s):  # shadow verdicts finish after the answer
        await finish_shadows(handler, ex, total_s)
        shadowed.append(ex)

    monkeypatch.setattr(ProxyHandler, "_audit_later", audit_later)
    gw = make_gateway(
        raw={"audit": {"enabled": False}},
        shadowed={"upstream": "main", "input": {"policies": ["spam"], "shadow": ["cheating"]}},
    )
    chat(gw, "gpt-4o-mini", "hello")  # the open route: recorded at once, if at all
    chat(gw, "shadowed-1", "say: an aimbot")
    deadline = time.monotonic() + 10
    while not shadowed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shadowed and made == []
