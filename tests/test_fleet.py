"""`server.workers: 2` as one server: summed /metrics, reload in every worker, one readiness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ADMIN_KEY,
    KEY,
    TEST_POLICIES,
    policy_text,
    start_gateway_process,
    write_config_file,
)
from tests.fakes.serve import free_socket

ROOT = Path(__file__).parent.parent


@dataclass
class Fleet:
    proc: subprocess.Popen
    base: str
    log: Path
    folder: Path

    def ready(self) -> dict:
        return httpx.get(self.base + "/readyz", timeout=10).json()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def fleet(upstream, classifier, tmp_path_factory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    path = write_config_file(tmp, upstream, classifier, **{"server": {"workers": 2}})
    (tmp / "policies" / "spam.md").write_text(TEST_POLICIES["spam"])
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running = Fleet(proc, f"http://127.0.0.1:{port}", log, tmp)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if len(running.ready()["checks"].get("workers", {})) == 2:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, running.log_text()
            time.sleep(0.1)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask(fleet: Fleet, text: str) -> httpx.Response:
    """A request on a new connection, so the two workers share them."""
    return httpx.post(
        fleet.base + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "connection": "close"},
        json={"model": "guarded-1", "messages": [{"role": "user", "content": text}]},
        timeout=10,
    )


def requests_total(fleet: Fleet) -> float:
    text = httpx.get(fleet.base + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("safeguard_requests_total{")
    )


def served(fleet: Fleet) -> dict[str, int]:
    return {i: w["served"] for i, w in fleet.ready()["checks"]["workers"].items()}


def test_metrics_total_equals_the_requests_sent_on_every_scrape(fleet):
    before = requests_total(fleet)
    sent = 0
    for _ in range(4):
        for _ in range(15):
            assert ask(fleet, "hello").status_code == 200
            sent += 1
        for _ in range(3):  # whichever worker takes the scrape, it counts every worker's
            assert requests_total(fleet) - before == sent
    assert all(n > 0 for n in served(fleet).values()), served(fleet)  # both did serve


def test_a_worker_that_dies_is_replaced_and_the_totals_do_not_go_back(fleet):
    for _ in range(10):
        assert ask(fleet, "hello").status_code == 200
    before = requests_total(fleet)  # this scrape is what the supervisor keeps of the dead
    workers = fleet.ready()["checks"]["workers"]
    victim = workers["0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            now = fleet.ready()["checks"]["workers"]
            if now.get("0", {}).get("pid") not in (None, victim) and all(
                w.get("ready") for w in now.values()
            ):
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert time.monotonic() < deadline, fleet.log_text()
        time.sleep(0.1)
    assert requests_total(fleet) >= before
    assert ask(fleet, "hello").status_code == 200


def test_a_broken_file_on_sighup_keeps_every_worker_on_the_old_set(fleet):
    old_set = fleet.ready()["checks"]["set"]
    policy = fleet.folder / "policies" / "cheating.md"
    good = policy.read_text()
    policy.write_text("---\naction: explode\n---\nbroken")
    try:
        fleet.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload failed" not in fleet.log_text():
            assert time.monotonic() < deadline, fleet.log_text()
            time.sleep(0.05)
        workers = fleet.ready()["checks"]["workers"]
        assert {w["set"] for w in workers.values()} == {old_set}
        assert [ask(fleet, "get an aimbot").status_code for _ in range(10)] == [400] * 10
        assert [ask(fleet, "say: a triggerbot").status_code for _ in range(10)] == [200] * 10
        assert fleet.log_text().count("reload failed") == 1  # reported once, not per worker
    finally:
        policy.write_text(good)


def test_a_reload_of_a_policy_and_a_route_reaches_every_worker(fleet):
    (fleet.folder / "policies" / "cheating.md").write_text(
        policy_text("cheating", triggers="aimbot, triggerbot", category="CH2")
    )
    config = fleet.folder / "gateway.yaml"
    config.write_text(
        config.read_text().replace(
            "policies:\n      - cheating", "policies:\n      - cheating\n      - spam"
        )
    )
    served_before = served(fleet)
    reply = httpx.post(
        fleet.base + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reply.status_code == 200 and "cheating" in reply.json()["detail"], reply.text
    new_set = reply.json()["set"]
    workers = fleet.ready()["checks"]["workers"]
    assert {w["set"] for w in workers.values()} == {new_set}
    # the policy changed everywhere...
    assert [ask(fleet, "say: a triggerbot").status_code for _ in range(12)] == [400] * 12
    # ...and so did the route (spam now annotates on it)
    decisions = {ask(fleet, "buy now").headers["x-safeguard-decision"] for _ in range(12)}
    assert decisions == {"annotate"}
    after = served(fleet)
    assert all(after[i] > served_before[i] for i in after), (served_before, after)


def test_one_process_reloads_routes_too_and_refuses_what_needs_a_restart(
    upstream, classifier, tmp_path
):
    path = write_config_file(tmp_path, upstream, classifier)
    (tmp_path / "policies" / "spam.md").write_text(TEST_POLICIES["spam"])
    proc, base = start_gateway_process(path)
    one = Fleet(proc, base, tmp_path / "unused.log", tmp_path)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        assert ask(one, "buy now").headers.get("x-safeguard-decision") != "annotate"
        text = path.read_text()
        path.write_text(
            text.replace("policies:\n      - cheating", "policies:\n      - cheating\n      - spam")
        )
        reply = httpx.post(base + "/admin/reload", headers=admin)
        assert reply.status_code == 200, reply.text
        assert ask(one, "buy now").headers["x-safeguard-decision"] == "annotate"
        # an upstream change needs a restart: refused, naming the key, the set kept
        path.write_text(path.read_text().replace("timeout_s: 3", "timeout_s: 4"))
        refused = httpx.post(base + "/admin/reload", headers=admin)
        assert refused.status_code == 422 and "upstreams" in refused.json()["detail"]
        assert ask(one, "buy now").headers["x-safeguard-decision"] == "annotate"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
