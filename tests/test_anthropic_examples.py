"""The Anthropic SDK examples run as a user runs them (a subprocess, env for the gateway
URL, key and model) against a gateway in front of the loopback Messages API upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.anthropic_support import claude_gateway
from tests.conftest import KEY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROUTE = {"input": {"policies": ["cheating"]}, "output": {"policies": ["violence"]}}


def run(gw, script: str, prompt: str, model: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": KEY,
        "MODEL": model,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    command = [sys.executable, str(EXAMPLES / script), prompt]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_sync_example_answers_and_reports_blocks(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=ROUTE)
    done = run(gw, "anthropic_sync.py", "hello claude", "claude-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: hello claude"
    assert "decision=allow request_id=" in done.stderr
    blocked = run(gw, "anthropic_sync.py", "best aimbot?", "claude-1")
    assert blocked.returncode == 2 and blocked.stdout.startswith("blocked (invalid_request_error)")
    withheld = run(gw, "anthropic_sync.py", "say: kill them all", "claude-1")
    assert withheld.returncode == 2 and "withheld by policy violence" in withheld.stdout


def test_stream_example_prints_text_and_the_tool_call(make_gateway, messages_upstream):
    gw = claude_gateway(make_gateway, messages_upstream, claude=ROUTE)
    done = run(gw, "anthropic_stream_tools.py", "say: rain in Oslo", "claude-tools")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Let me look that up.",
        'tool call: search({"query": "rain in Oslo"})',
    ]
    stopped = run(gw, "anthropic_stream_tools.py", "say: kill them all", "claude-tools")
    assert stopped.returncode == 2 and "kill" not in stopped.stdout
    assert "[stream stopped by an output policy]" in stopped.stdout


def test_examples_default_to_the_local_gateway_and_dev_key():
    for script in ("anthropic_sync.py", "anthropic_stream_tools.py"):
        source = (EXAMPLES / script).read_text()
        assert '"http://127.0.0.1:8080"' in source and '"sk-safeguard-dev"' in source
