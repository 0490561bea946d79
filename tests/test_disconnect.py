"""A client gone before its answer started: the classifier and upstream calls are
cancelled (their connections close) and the audit record says 499 client_disconnected."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import KEY, audit_records

GUARDED_INPUT = {"upstream": "main", "input": {"policies": ["cheating"]}}
PARALLEL_INPUT = {"upstream": "main", "input": {"policies": ["cheating"], "mode": "parallel"}}


def leave_early(gw, model: str, wait_s: float = 0.3) -> None:
    """Send a chat request and hang up after `wait_s` without an answer."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gw.base_url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
            timeout=httpx.Timeout(5, read=wait_s),
        )


def wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def test_gone_during_the_input_guard_cancels_the_classifier_and_never_calls_upstream(
    make_gateway, upstream, classifier
):
    gw = make_gateway(guarded=GUARDED_INPUT)
    classifier[0].delay_s = 1.5
    leave_early(gw, "guarded-x")
    wait_for(lambda: classifier[0].hung_up == 1)
    (record,) = audit_records(gw)
    assert (record["status"], record["error"]) == (499, "client_disconnected")
    time.sleep(1.5)  # past the classifier's delay: nothing went on to the upstream
    assert upstream[0].requests == []


def test_gone_during_a_parallel_guard_cancels_the_upstream_call(make_gateway, upstream, classifier):
    gw = make_gateway(guarded=PARALLEL_INPUT)
    classifier[0].delay_s = 1.5
    upstream[0].first_token_delay_s = 1.5
    leave_early(gw, "guarded-x")
    wait_for(lambda: classifier[0].hung_up == 1 and upstream[0].hung_up == 1)
    (record,) = audit_records(gw)
    assert (record["status"], record["error"]) == (499, "client_disconnected")


def test_gone_while_waiting_for_the_upstreams_headers_cancels_it(make_gateway, upstream):
    gw = make_gateway()
    upstream[0].first_token_delay_s = 1.5
    leave_early(gw, "echo")
    wait_for(lambda: upstream[0].hung_up == 1)
    (record,) = audit_records(gw)
    assert (record["status"], record["error"]) == (499, "client_disconnected")
    assert record["route"] == "open"


def test_a_patient_client_still_gets_its_answer(make_gateway, upstream, classifier):
    gw = make_gateway(guarded=GUARDED_INPUT)
    classifier[0].delay_s = 0.3
    upstream[0].first_token_delay_s = 0.3
    body = {"model": "guarded-x", "messages": [{"role": "user", "content": "hello"}]}
    answer = httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 200
    assert (classifier[0].hung_up, upstream[0].hung_up) == (0, 0)
    (record,) = audit_records(gw)
    assert record["status"] == 200
