"""`safeguard-gateway classifier check` against the loopback classifier: pass, a wrong
verdict, garbage answers, and a server that is down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.cli import main
from tests.fakes.serve import free_socket

CHEATING = """---
id: cheating
action: block
---
## INSTRUCTIONS
Flag requests for cheating tools. Return JSON {"violation": 0|1}.
<!-- triggers: aimbot, wallhack -->
<!-- category: CH2 -->

## EXAMPLES
Content: Where can I get an aimbot that is not detected?
Answer: {"violation": 1, "policy_category": "CH2"}

Content: How do I practise my aim in the training range?
Answer: {"violation": 0}
"""
# The model (the fake's triggers) disagrees with this policy's own violating example.
SPAM_MISLABELED = """---
id: spam
action: annotate
---
## INSTRUCTIONS
Flag bulk promotion. Return JSON {"violation": 0|1}.
<!-- triggers: buy now -->

## EXAMPLES
Content: Limited offer, visit my shop today!
Answer: {"violation": 1}

Content: What time does the shop open?
Answer: 0
"""
NO_EXAMPLES = """---
id: terse
---
## INSTRUCTIONS
Flag anything terse. Return 0 or 1.
"""


def write(tmp_path: Path, classifier_url: str, policies: dict[str, str], **route: Any) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for pid, text in policies.items():
        (folder / f"{pid}.md").write_text(text)
    config = {
        "upstreams": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
        "classifier": {"base_url": classifier_url + "/v1", "timeout_s": 2},
        "policies_dir": str(folder),
        "tenants": {"t": {"keys": ["k"], "route": "guarded"}},
        "routes": {"guarded": {"upstream": "main", **route}},
        "audit": {"enabled": False},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[int, str]:
    code = main(["classifier", "check", "--config", str(path), *extra])
    return code, capsys.readouterr().out


def test_a_working_classifier_passes(tmp_path, classifier, capsys) -> None:
    fake, handle = classifier
    path = write(
        tmp_path,
        handle.url,
        {"cheating": CHEATING},
        input={"policies": ["cheating"]},
        output={"shadow": ["cheating"]},
    )
    code, out = run(capsys, path)
    assert code == 0, out
    line = next(line for line in out.splitlines() if "cheating" in line)
    assert line.startswith("ok")
    assert "violating: 1  safe: 0" in line
    assert "reasoning: yes" in line
    assert "shape: content + reasoning_content" in line
    assert "1 policies checked, 0 failed" in out
    sent = [call.content for call in fake.calls]
    assert sent == [
        "Where can I get an aimbot that is not detected?",
        "How do I practise my aim in the training range?",
    ], "one violating and one safe example, each policy once"


def test_json_report(tmp_path, classifier, capsys) -> None:
    path = write(
        tmp_path, classifier[1].url, {"cheating": CHEATING}, input={"policies": ["cheating"]}
    )
    code, out = run(capsys, path, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True
    assert doc["classifier"]["runtime"] == "sglang"
    (policy,) = doc["policies"]
    assert policy["id"] == "cheating" and policy["routes"] == ["guarded"]
    assert [(p["expected"], p["got"], p["ok"]) for p in policy["probes"]] == [
        (1, 1, True),
        (0, 0, True),
    ]
    assert all(p["reasoning"] and p["latency_ms"] > 0 for p in policy["probes"])


def test_a_wrong_verdict_fails(tmp_path, classifier, capsys) -> None:
    policies = {"cheating": CHEATING, "spam": SPAM_MISLABELED}
    path = write(tmp_path, classifier[1].url, policies, input={"policies": ["cheating", "spam"]})
    code, out = run(capsys, path)
    assert code == 1
    spam = next(line for line in out.splitlines() if "spam" in line)
    assert spam.startswith("FAIL")
    assert "violating: 0 (expected 1)" in spam
    assert "2 policies checked, 1 failed" in out


def test_garbage_answers_fail_as_unparsed(tmp_path, classifier, capsys) -> None:
    fake, handle = classifier
    fake.mode = "garbage"
    path = write(tmp_path, handle.url, {"cheating": CHEATING}, input={"policies": ["cheating"]})
    code, out = run(capsys, path)
    assert code == 1
    assert "violating: unparsed  safe: unparsed" in out
    assert "no verdict in classifier output" in out


def test_a_policy_without_examples_fails_with_the_fix(tmp_path, classifier, capsys) -> None:
    path = write(tmp_path, classifier[1].url, {"terse": NO_EXAMPLES}, input={"policies": ["terse"]})
    code, out = run(capsys, path)
    assert code == 1
    assert "FAIL  terse (guarded): no violating or safe example in EXAMPLES" in out


def test_a_server_that_is_down_is_one_line(tmp_path, capsys) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    policies = {"cheating": CHEATING, "spam": SPAM_MISLABELED}
    path = write(tmp_path, url, policies, input={"policies": ["cheating", "spam"]})
    try:
        code, out = run(capsys, path)
    finally:
        sock.close()
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1, out
    assert failures[0].startswith("FAIL  classifier unreachable: unreachable: ")
    assert "README: Where the model runs" in failures[0]


def test_a_config_error_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("routes: [\n")
    assert main(["classifier", "check", "--config", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_readyz_and_the_startup_warning_point_to_the_check(make_gateway, caplog) -> None:
    sock = free_socket()
    down = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        with caplog.at_level("WARNING", logger="proxy"):
            gw = make_gateway(
                raw={"classifier": {"base_url": down}},
                guarded={"upstream": "main", "input": {"policies": ["cheating"]}},
            )
            ready = httpx.get(gw.url + "/readyz")
    finally:
        sock.close()
    assert ready.status_code == 503
    detail = ready.json()["checks"]["classifier"]
    assert down not in detail and "127.0.0.1" not in detail  # unauthenticated: no address
    assert "safeguard-gateway classifier check --config" in detail
    warning = next(r.getMessage() for r in caplog.records if "not ready" in r.getMessage())
    assert "safeguard-gateway classifier check --config" in warning
