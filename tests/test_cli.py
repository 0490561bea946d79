"""The command line as operators use it: serve (signals), check-config, python -m proxy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from proxy.cli import main
from tests.conftest import KEY, policy_text, start_gateway_process, write_config_file

ROOT = Path(__file__).parent.parent


def ask(base: str, text: str) -> int:
    return httpx.post(
        base + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "guarded-1", "messages": [{"role": "user", "content": text}]},
        timeout=10,
    ).status_code


def test_sighup_reloads_policies_without_a_restart(upstream, classifier, tmp_path):
    proc, base = start_gateway_process(write_config_file(tmp_path, upstream, classifier))
    try:
        assert ask(base, "say: a triggerbot") == 200
        (tmp_path / "policies" / "cheating.md").write_text(
            policy_text("cheating", triggers="aimbot, triggerbot", category="CH2")
        )
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while ask(base, "say: a triggerbot") != 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ask(base, "say: a triggerbot") == 400
        assert proc.poll() is None  # same process, still serving
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_check_config_accepts_the_shipped_config(capsys):
    assert main(["check-config", "--config", str(ROOT / "config" / "gateway.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_invalid_config_is_refused_with_one_line_naming_the_key(upstream, classifier, tmp_path):
    path = write_config_file(
        tmp_path, upstream, classifier, **{"routes.guarded.input.mode": "fast"}
    )
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "safeguard-gateway: config error: routes.guarded.input.mode: must be one of parallel, "
        "sequential (got 'fast')"
    ]


def test_a_route_naming_a_missing_policy_is_refused(upstream, classifier, tmp_path, capsys):
    path = write_config_file(tmp_path, upstream, classifier)
    (tmp_path / "policies" / "cheating.md").unlink()
    assert main(["check-config", "--config", str(path)]) == 2
    assert "routes.guarded.input.policies: no policy 'cheating'" in capsys.readouterr().err


def test_several_workers_serve_and_share_one_audit_store(upstream, classifier, tmp_path):
    from proxy.audit_store import query

    path = write_config_file(tmp_path, upstream, classifier, **{"audit.content": "none"})
    proc, base = start_gateway_process(path, "--workers", "2")
    try:
        ids = set()
        for i in range(40):
            r = httpx.post(
                base + "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}"},
                json={"model": "guarded-1", "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            assert r.status_code == 200
            ids.add(r.headers["x-request-id"])
        assert len(ids) == 40  # ids stay unique across worker processes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stored = {r["request_id"] for r in query(str(tmp_path / "audit.db"), limit=None)}
    assert ids <= stored
