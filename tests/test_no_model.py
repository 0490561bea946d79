"""No model at all: examples/configs/no-model.yaml end to end, and the README's
examples/see-it-work.sh run against it. Detectors-only policies redact and block by
pattern, never call the classifier, and /readyz does not wait for one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from openai import BadRequestError, OpenAI

from proxy.app import build_app
from proxy.config import Config, InputSide, PolicyRef, load_config
from tests.conftest import RunningGateway, audit_records
from tests.fakes.serve import serve

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = REPO / "examples" / "configs" / "no-model.yaml"
DEV_KEY = "sk-safeguard-dev"


def no_model_config(upstream, classifier, tmp_path: Path) -> tuple[Config, dict[str, str]]:
    env = {
        "UPSTREAM_BASE_URL": upstream[1].url + "/v1",
        "AUDIT_PATH": str(tmp_path / "audit.db"),
        "SAFEGUARD_POLICIES_DIR": str(REPO / "examples" / "no-model-policies"),
    }
    config = load_config(NO_MODEL, env=env)
    # Were any policy to ask the model, the loopback classifier would count the call.
    config = replace(config, classifier=replace(config.classifier, base_url=classifier[1].url))
    return config, env


def start(config: Config) -> Iterator[RunningGateway]:
    app = build_app(config)
    handle = serve(app, lifespan="on")
    yield RunningGateway(handle.url, handle, app, config, key=DEV_KEY)
    handle.stop()


@pytest.fixture
def env_and_gateway(upstream, classifier, tmp_path) -> Iterator[tuple[dict, RunningGateway]]:
    config, env = no_model_config(upstream, classifier, tmp_path)
    for gw in start(config):
        yield env, gw


@pytest.fixture
def gateway(env_and_gateway) -> RunningGateway:
    return env_and_gateway[1]


def client(gw: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gw.base_url, api_key=DEV_KEY, max_retries=0)


def test_ready_without_a_model(gateway, classifier) -> None:
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert "classifier" not in ready.json()["checks"]


def test_a_credential_is_blocked_by_pattern(gateway, upstream, classifier) -> None:
    with pytest.raises(BadRequestError) as info:
        client(gateway).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE, fix it"}],
        )
    assert info.value.body["code"] == "content_filter"
    assert upstream[0].requests == [], "a blocked prompt never reaches the upstream"
    assert classifier[0].calls == []


def test_personal_data_is_redacted_both_ways(gateway, upstream, classifier) -> None:
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "say: mail dana.ruiz@example.com or (312) 555-7841"}],
    )
    assert reply.headers["x-safeguard-decision"] == "redact"
    sent = upstream[0].requests[-1].body["messages"][-1]["content"]
    assert sent == "say: mail [REDACTED:EMAIL] or [REDACTED:PHONE]"
    assert reply.parse().choices[0].message.content == "mail [REDACTED:EMAIL] or [REDACTED:PHONE]"
    assert classifier[0].calls == []
    (record,) = audit_records(gateway)
    assert record["decision"] == "redact"
    assert {v["source"] for v in record["verdicts"]} == {"detector"}


def test_the_pass_through_route_forwards_untouched(gateway, upstream) -> None:
    text = "say: dana.ruiz@example.com"
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="raw-gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    assert reply.parse().choices[0].message.content == "dana.ruiz@example.com"
    assert upstream[0].requests[-1].body["messages"][-1]["content"] == text


def test_an_answer_is_redacted_by_pattern(upstream, classifier, tmp_path) -> None:
    config, _ = no_model_config(upstream, classifier, tmp_path)
    # Input left unguarded, so the address can only come back in the answer.
    route = config.routes["patterns"]
    open_input = replace(route, input=InputSide(policies=(PolicyRef("secret-patterns"),)))
    config = replace(config, routes={**config.routes, "patterns": open_input})
    for gw in start(config):
        stream = client(gw).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "say: write to dana.ruiz@example.com"}],
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "write to [REDACTED:EMAIL]"
    assert classifier[0].calls == []


def test_see_it_work_script_runs_as_printed(env_and_gateway, tmp_path) -> None:
    env, gw = env_and_gateway
    run_env = {
        **os.environ,
        **env,
        "GATEWAY_URL": gw.url,
        "CONFIG": str(NO_MODEL),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "see-it-work.sh")],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    steps = done.stdout.split("\n\n")
    assert "HTTP 400, x-safeguard-decision: block" in steps[0]
    assert "HTTP 200, x-safeguard-decision: redact" in steps[1]
    assert "[REDACTED:EMAIL]" in steps[1] and "dana.ruiz@example.com" not in steps[1]
    assert "HTTP 200" in steps[2]
    audit = steps[3]
    assert "block" in audit and "redact" in audit
