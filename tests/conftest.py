"""Shared fixtures: a loopback OpenAI-compatible upstream, a loopback SGLang-style
classifier (both started once per session) and gateways built from small configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.app import build_app
from proxy.config import Config, parse_config
from proxy.server import uvicorn_options
from tests.fakes.classifier import FakeSafeguard
from tests.fakes.collector import Collector
from tests.fakes.engines import postgres_server, redis_server  # noqa: F401 (fixtures)
from tests.fakes.mcp_server import POISONED_INSTRUCTIONS, RecordingMcp
from tests.fakes.serve import ServerHandle, free_socket, serve
from tests.fakes.upstream import FakeOpenAI

KEY = "sk-acme-test-key"
OTHER_KEY = "sk-globex-test-key"
ADMIN_KEY = "sk-admin-test-key"
UPSTREAM_KEY = "sk-upstream-secret-never-leaks"


def policy_text(
    pid: str,
    *,
    action: str = "block",
    triggers: str = "",
    category: str = "V1",
    detectors: str = "",
    scope: str = "last_user",
) -> str:
    front = f"id: {pid}\naction: {action}\nscope: {scope}\ncategory: {category}\n"
    if detectors:
        front += f"detectors: [{detectors}]\n"
    body = textwrap.dedent(f"""\
        ## INSTRUCTIONS
        Decide whether the content violates the {pid} policy. Answer with JSON.
        <!-- triggers: {triggers} -->
        <!-- category: {category} -->
        """)
    return f"---\n{front}---\n{body}"


TEST_POLICIES = {
    "cheating": policy_text("cheating", triggers="aimbot, wallhack", category="CH2"),
    "spam": policy_text("spam", action="annotate", triggers="buy now", category="SP1"),
    "pii": policy_text(
        "pii",
        action="redact",
        triggers="my address is",
        detectors="email, phone, credit_card, us_ssn",
        category="PII",
    ),
    "violence": policy_text("violence", triggers="kill them all", category="VI1"),
    "injection": policy_text(
        "injection", triggers="ignore previous instructions", category="PI1", scope="conversation"
    ),
}


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeOpenAI, ServerHandle]]:
    fake = FakeOpenAI()
    handle = serve(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture(scope="session")
def classifier() -> Iterator[tuple[FakeSafeguard, ServerHandle]]:
    fake = FakeSafeguard()
    handle = serve(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> None:
    for name in ("upstream", "classifier"):
        if name in request.fixturenames:
            request.getfixturevalue(name)[0].reset()


@dataclass
class RunningGateway:
    url: str
    handle: ServerHandle
    app: Any
    config: Config
    key: str = KEY

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gateway(self) -> Any:
        return self.app.gateway


def base_config(upstream_url: str, classifier_url: str, tmp: Path, **routes: dict) -> dict:
    return {
        "upstreams": {
            "main": {
                "base_url": upstream_url + "/v1",
                "api_key": UPSTREAM_KEY,
                "timeout_s": 3,
                "connect_timeout_s": 1,
            }
        },
        "classifier": {"base_url": classifier_url + "/v1", "timeout_s": 1},
        "policies_dir": str(tmp / "policies"),
        "tenants": {
            # acme reaches each extra route NAME with models "NAME-*", everything else "open"
            "acme": {"keys": [KEY], "routes": {**{f"{n}-*": n for n in routes}, "*": "open"}},
            "globex": {"keys": [OTHER_KEY], "route": "open"},
        },
        "routes": {"open": {"upstream": "main"}, **routes},
        "admin": {"keys": [ADMIN_KEY]},
        "audit": {"path": str(tmp / "audit.db"), "content": "full", "flush_interval_s": 0.05},
    }


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def make_gateway(upstream, classifier, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start a gateway on loopback: `make_gateway(guarded={...route...}, policies={...})`."""
    started: list[RunningGateway] = []

    def make(
        *,
        policies: dict[str, str] | None = None,
        raw: dict | None = None,
        options: dict | None = None,
        **routes: dict,
    ) -> RunningGateway:
        folder = tmp_path / "policies"
        folder.mkdir(exist_ok=True)
        for pid, text in (TEST_POLICIES if policies is None else policies).items():
            (folder / f"{pid}.md").write_text(text)
        data = base_config(upstream[1].url, classifier[1].url, tmp_path, **routes)
        for key, value in (raw or {}).items():
            data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
        config = parse_config(data)
        app = build_app(config, **(options or {}))
        handle = serve(app, lifespan="on", **uvicorn_options(config.server))
        running = RunningGateway(handle.url, handle, app, config)
        started.append(running)
        return running

    yield make
    for running in started:
        running.handle.stop()


@pytest.fixture(scope="session")
def gateway(
    upstream, classifier, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """One long-lived gateway with an open (unguarded) route for every model."""
    tmp = tmp_path_factory.mktemp("session-gateway")
    (tmp / "policies").mkdir()
    for pid, text in TEST_POLICIES.items():
        (tmp / "policies" / f"{pid}.md").write_text(text)
    config = parse_config(base_config(upstream[1].url, classifier[1].url, tmp))
    app = build_app(config)
    handle = serve(app, lifespan="on", **uvicorn_options(config.server))
    yield RunningGateway(handle.url, handle, app, config)
    handle.stop()


def audit_records(
    gw: RunningGateway, count: int = 1, timeout: float = 5.0, **filters: Any
) -> list[dict]:
    """The gateway's audit records (oldest first), waiting until at least `count` exist."""
    import time

    from proxy.audit_store import StoreMissing, query

    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while time.monotonic() < deadline:
        try:
            records = query(gw.config.audit.path, limit=None, newest_first=False, **filters)
        except StoreMissing:
            records = []
        if len(records) >= count:
            return records
        time.sleep(0.02)
    return records


def start_gateway_process(config_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m proxy serve` in its own process (signals reach its main thread)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway process did not start")


def write_config_file(tmp_path: Path, upstream, classifier, **changes: Any) -> Path:
    """A YAML config with a `guarded` route (input policy `cheating`), for real processes.

    `changes` maps a dotted key to a value, e.g. `{"audit.content": "none"}`."""
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "cheating.md").write_text(TEST_POLICIES["cheating"])
    config = base_config(
        upstream[1].url,
        classifier[1].url,
        tmp_path,
        guarded={"upstream": "main", "input": {"policies": ["cheating"]}},
    )
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # key order is route order
    return path


@pytest.fixture
def receiver() -> Iterator[Collector]:
    """A loopback OTLP/HTTP collector, for one test."""
    collector = Collector()
    yield collector
    collector.close()


@pytest.fixture(scope="session")
def mcp_servers() -> Iterator[dict[str, tuple[RecordingMcp, ServerHandle]]]:
    """The SDK's server answering with SSE (its default), with plain JSON, stateless (so
    it speaks MCP 2026-07-28 too), and one whose initialize instructions carry an
    injection."""
    running = {}
    for name, fake in (
        ("docs", RecordingMcp()),
        ("docs-json", RecordingMcp(json_response=True)),
        ("docs-modern", RecordingMcp(stateless=True)),
        ("docs-poisoned", RecordingMcp(stateless=True, instructions=POISONED_INSTRUCTIONS)),
    ):
        running[name] = (fake, serve(fake, lifespan="on"))
    yield running
    for _, handle in running.values():
        handle.stop()
