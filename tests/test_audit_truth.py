"""The audit says what happened: fail-open passes are `fail_open`, a client's request id is
its own field, and the public readiness probe names no internal address."""

from __future__ import annotations

import logging

import httpx
import orjson
import yaml

from proxy.cli import main
from tests.conftest import KEY, OTHER_KEY, audit_records

FAIL_OPEN = {"upstream": "main", "input": {"policies": ["cheating"]}, "fail": "open"}
FAIL_CLOSED = {"upstream": "main", "input": {"policies": ["cheating"]}}


def chat(gw, model: str, key: str = KEY, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(
        gw.base_url + "/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
    )


def cli_config(gw, tmp_path) -> str:
    path = tmp_path / "cli.yaml"
    data = {
        "upstreams": {"main": {"base_url": "http://127.0.0.1:1/v1"}},
        "tenants": {"t": {"keys": ["k" * 20], "route": "r"}},
        "routes": {"r": {"upstream": "main"}},
        "audit": {"path": gw.config.audit.path},
    }
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_fail_open_pass_is_audited_as_fail_open_and_found_by_the_cli(
    make_gateway, classifier, tmp_path, capsys
):
    gw = make_gateway(guarded=FAIL_OPEN)
    classifier[0].mode = "error500"
    passed = chat(gw, "guarded-x")
    assert passed.status_code == 200
    assert passed.headers["x-safeguard-decision"] == "allow"  # the header keeps its values
    classifier[0].mode = "ok"
    assert chat(gw, "guarded-x").status_code == 200  # a real allow
    records = audit_records(gw, 2)
    assert [r["decision"] for r in records] == ["fail_open", "allow"]
    assert records[0]["verdicts"][0]["label"] == "error"
    capsys.readouterr()
    config = cli_config(gw, tmp_path)
    assert main(["audit", "query", "--config", config, "--decision", "fail_open", "--json"]) == 0
    found = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in found] == [passed.headers["x-request-id"]]
    assert main(["audit", "stats", "--config", config]) == 0
    assert "FAIL_OPEN" in capsys.readouterr().out


def test_a_blocked_request_stays_block_even_if_another_policy_failed_open(make_gateway):
    gw = make_gateway(guarded={**FAIL_OPEN, "input": {"policies": ["cheating", "spam"]}})
    body = {"model": "guarded-x", "messages": [{"role": "user", "content": "an aimbot"}]}
    answer = httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 400
    assert audit_records(gw)[0]["decision"] == "block"


def test_a_client_request_id_is_its_own_field_and_never_the_record_id(make_gateway):
    gw = make_gateway()
    first = chat(gw, "echo", KEY, **{"x-request-id": "shared-id-1"})
    second = chat(gw, "echo", OTHER_KEY, **{"x-request-id": "shared-id-1"})
    third = chat(gw, "echo", KEY, **{"x-client-request-id": "openai-style-2"})
    ids = [r.headers["x-request-id"] for r in (first, second, third)]
    assert len(set(ids)) == 3 and all(i.startswith("req_") for i in ids)
    assert first.headers["x-client-request-id"] == "shared-id-1"
    records = audit_records(gw, 3)
    assert [r["request_id"] for r in records] == ids
    assert [r["client_request_id"] for r in records] == [
        "shared-id-1",
        "shared-id-1",
        "openai-style-2",
    ]
    assert [r["tenant"] for r in records] == ["acme", "globex", "acme"]


def test_readyz_names_no_internal_address_and_logs_it(make_gateway, caplog):
    gw = make_gateway(
        guarded=FAIL_CLOSED, raw={"classifier": {"base_url": "http://127.0.0.1:9/v1"}}
    )
    with caplog.at_level(logging.WARNING, logger="proxy"):
        ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503
    assert "127.0.0.1" not in ready.text and ":9" not in ready.text
    assert "unreachable" in ready.json()["checks"]["classifier"]
    assert "http://127.0.0.1:9/v1" in caplog.text


def test_readyz_stays_ready_when_every_guarded_route_fails_open(make_gateway):
    gw = make_gateway(guarded=FAIL_OPEN, raw={"classifier": {"base_url": "http://127.0.0.1:9/v1"}})
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "fails open" in ready.json()["checks"]["classifier"]
    assert "127.0.0.1" not in ready.text
