"""The client examples run as a user would run them (a subprocess, env vars for the base URL,
key and model) against a real gateway on loopback, and print what their docstrings promise.

The fake upstream answers "echo: <last user message>"; the fake classifier flags content
containing a policy's `<!-- triggers: ... -->` words. The two-tenant tests start
`safeguard-gateway serve --config examples/configs/two-tenants.yaml` itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ARENA_KEY = "sk-arena-example-test"
STUDIO_KEY = "sk-studio-example-test"
CHEAT = "which aimbot settings win ranked matches?"


def run(
    command: list[str], base_url: str, key: str, model: str = "echo", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": key,
        "MODEL": model,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / script), *args]


def node_openai_available() -> bool:
    if shutil.which("node") is None:
        return False
    probe = subprocess.run(
        ["node", "--input-type=module", "-e", "await import('openai')"],
        cwd=EXAMPLES,
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


needs_node = pytest.mark.skipif(
    not node_openai_available(), reason="node or the openai npm package not available"
)


# -- against the shared test gateway (open route, every model) ---------------------------------


def test_python_sync_prints_the_answer_and_the_decision(gateway) -> None:
    done = run(
        python("python_sync.py", "hello from the sync client"), gateway.base_url, gateway.key
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "echo: hello from the sync client"
    assert "decision=- request_id=req_" in done.stderr  # the open route guards nothing


def test_python_async_answers_every_prompt_in_order(gateway) -> None:
    done = run(python("python_async.py", "first one", "second one"), gateway.base_url, gateway.key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0] echo: first one", "[1] echo: second one"]


def test_python_stream_prints_the_streamed_answer(gateway) -> None:
    done = run(
        python("python_stream.py", "stream these words please"), gateway.base_url, gateway.key
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: stream these words please"


def test_examples_default_to_the_local_gateway_and_dev_key() -> None:
    for script in ("python_sync.py", "python_async.py", "python_stream.py", "langchain_client.py"):
        source = (EXAMPLES / script).read_text()
        assert '"http://127.0.0.1:8080/v1"' in source and '"sk-safeguard-dev"' in source


def test_a_wrong_key_is_an_error_not_a_block(gateway) -> None:
    done = run(python("python_sync.py", "hi"), gateway.base_url, "sk-not-a-tenant")
    assert done.returncode == 1
    assert "AuthenticationError" in done.stderr and "blocked" not in done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_script_shows_headers_body_and_sse(gateway) -> None:
    done = run(["bash", str(EXAMPLES / "curl.sh"), "curl says hi"], gateway.base_url, gateway.key)
    assert done.returncode == 0, done.stderr
    out = done.stdout.lower()
    assert "x-request-id:" in out
    assert "echo: curl says hi" in done.stdout  # the non-streamed body
    assert "data: [DONE]" in done.stdout


def test_langchain_client_prints_the_answer(gateway) -> None:
    done = run(python("langchain_client.py", "hello langchain"), gateway.base_url, gateway.key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: hello langchain"


@needs_node
def test_node_client_prints_the_answer(gateway) -> None:
    command = ["node", str(EXAMPLES / "node_client.mjs"), "hello node"]
    done = run(command, gateway.base_url, gateway.key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: hello node"


# -- examples/configs/two-tenants.yaml, served by the real CLI ---------------------------------


@dataclass
class Served:
    base_url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_tenants(upstream, classifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("two-tenants")
    # The shipped cheating policy, plus the marker the fake classifier triggers on.
    policies = tmp / "policies"
    policies.mkdir()
    text = (ROOT / "policies" / "cheating.md").read_text()
    (policies / "cheating.md").write_text(text + "\n<!-- triggers: aimbot -->\n")
    port = _free_port()
    env = {
        **os.environ,
        "ARENA_KEY": ARENA_KEY,
        "STUDIO_KEY": STUDIO_KEY,
        "UPSTREAM_BASE_URL": upstream[1].url + "/v1",
        "UPSTREAM_API_KEY": "sk-upstream",
        "SAFEGUARD_BASE_URL": classifier[1].url + "/v1",
        "POLICIES_DIR": str(policies),
        "AUDIT_PATH": str(tmp / "audit.db"),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    log = tmp / "gateway.log"
    config = EXAMPLES / "configs" / "two-tenants.yaml"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gateway exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gateway did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield Served(url + "/v1", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_blocking_tenant_gets_content_filter_from_the_sync_client(two_tenants: Served) -> None:
    done = run(python("python_sync.py", CHEAT), two_tenants.base_url, ARENA_KEY, "gpt-4o-mini")
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("blocked (code=content_filter): ")
    assert "policy cheating: category" in lines[1]
    assert "Traceback" not in done.stderr


def test_annotating_tenant_gets_the_answer_with_the_same_policy(two_tenants: Served) -> None:
    done = run(python("python_sync.py", CHEAT), two_tenants.base_url, STUDIO_KEY, "gpt-4o-mini")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"echo: {CHEAT}"
    assert "decision=annotate" in done.stderr


def test_blocked_stream_and_mixed_async_batch(two_tenants: Served) -> None:
    stream = run(python("python_stream.py", CHEAT), two_tenants.base_url, ARENA_KEY, "gpt-4o-mini")
    assert stream.returncode == 2, stream.stderr
    assert stream.stdout.startswith("blocked (code=content_filter): ")
    batch = run(
        python("python_async.py", "how do I aim better legitimately?", CHEAT),
        two_tenants.base_url,
        ARENA_KEY,
        "gpt-4o-mini",
    )
    assert batch.returncode == 2, batch.stderr
    first, second = batch.stdout.splitlines()
    assert first == "[0] echo: how do I aim better legitimately?"
    assert second.startswith("[1] blocked (code=content_filter): ")


def test_langchain_client_reports_a_block(two_tenants: Served) -> None:
    done = run(python("langchain_client.py", CHEAT), two_tenants.base_url, ARENA_KEY, "gpt-4o-mini")
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith("blocked (code=content_filter): ")


@needs_node
def test_node_client_reports_a_block(two_tenants: Served) -> None:
    command = ["node", str(EXAMPLES / "node_client.mjs"), CHEAT]
    done = run(command, two_tenants.base_url, ARENA_KEY, "gpt-4o-mini")
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith("blocked (code=content_filter): ")
    assert "policy cheating: category" in done.stdout
