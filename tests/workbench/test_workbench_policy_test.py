"""`policy test` end to end against the loopback SGLang stand-in."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.workbench.report import ProgressBar
from tests.fakes.classifier import FakeSafeguard
from tests.fakes.serve import ServerHandle, serve

# The fake flags content containing "aimbot" or "wallhack" and reports category CH1.
HAND_CHECKED = [
    ("Where can I buy an aimbot?", 1, "CH1"),  # 1 TP, category agrees
    ("Free wallhack download", 1, "CH2"),  # 2 TP, category disagrees
    ("Boosting service, cheap", 1, "CH3"),  # 3 FN
    ("Selling ranked accounts", 1, "CH3"),  # 4 FN
    ("How do devs detect an aimbot?", 0),  # 5 FP
    ("What's the weather like?", 0),  # 6 TN
    ("Best mouse settings for aim", 0),  # 7 TN
    ("Pancake recipe please", 0),  # 8 TN
]


@pytest.fixture
def setup(safeguard, write_policy, write_cases):
    policy = write_policy("cheating", "aimbot, wallhack", "CH1")
    cases = write_cases(HAND_CHECKED)
    return safeguard, policy, cases


def test_metrics_are_exact_on_a_hand_checked_set(cli, setup) -> None:
    safeguard, policy, cases = setup
    result = cli(
        "policy", "test", policy, "--cases", cases, "--classifier", safeguard.url, "--json"
    )
    assert result.code == 0, result.err
    doc = result.json()
    m = doc["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["errors"]) == (2, 1, 2, 3, 0)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["recall"] == 0.5
    assert m["f1"] == pytest.approx(4 / 7, abs=1e-4)
    assert m["accuracy"] == 0.625
    assert m["category_agreement"] == 0.5
    categories = {c["category"]: c for c in m["categories"]}
    assert (categories["CH1"]["recall"], categories["CH1"]["category_agreement"]) == (1.0, 1.0)
    assert (categories["CH2"]["recall"], categories["CH2"]["category_agreement"]) == (1.0, 0.0)
    assert (categories["CH3"]["positives"], categories["CH3"]["recall"]) == (2, 0.0)
    assert m["latency_ms"]["p50"] > 0 and m["latency_ms"]["p95"] >= m["latency_ms"]["p50"]
    assert [d["index"] for d in doc["disagreements"]] == [3, 4, 5]
    assert doc["disagreements"][2]["rationale"] == "Matches a trigger."
    assert doc["disagreements"][2]["reasoning"].startswith("The policy asks")
    assert doc["policy"]["id"] == "cheating" and len(doc["policy"]["version"]) == 12
    assert doc["cases"] == {"path": str(cases), "count": 8, "positives": 4, "negatives": 4}
    assert [r["outcome"] for r in doc["results"]] == [
        "TP",
        "TP",
        "FN",
        "FN",
        "FP",
        "TN",
        "TN",
        "TN",
    ]
    assert doc["compare"] is None and doc["passed"] is None
    assert len(safeguard.fake.calls) == 8


def test_text_report_has_every_part(cli, setup) -> None:
    safeguard, policy, cases = setup
    result = cli("policy", "test", policy, "--cases", cases, "--classifier", safeguard.url)
    assert result.code == 0
    out = result.out
    assert "precision 0.667   recall 0.500   F1 0.571   accuracy 0.625" in out
    assert re.search(r"expected 1\s+TP 2\s+FN 2", out)
    assert re.search(r"expected 0\s+FP 1\s+TN 3", out)
    assert re.search(r"CH2\s+1\s+1\s+1\.000\s+0/1 \(0\.000\)", out)
    assert re.search(r"CH3\s+2\s+0\s+0\.000\s+n/a", out)
    assert re.search(r"latency\s+p50 [\d.]+ ms\s+p95 [\d.]+ ms", out)
    assert "disagreements (3)" in out
    assert "#3 (line 3)  FN (missed)  expected 1 [CH3], got 0" in out
    assert "#5 (line 5)  FP (over-flagged)  expected 0, got 1 [CH1]" in out
    assert "content:   How do devs detect an aimbot?" in out
    assert "rationale: No trigger found." in out
    assert "reasoning: The policy asks" in out
    assert "\r" not in result.err  # no progress bar when stderr is not a terminal


def test_min_f1_gates_the_exit_code(cli, setup) -> None:
    safeguard, policy, cases = setup
    base = ("policy", "test", policy, "--cases", cases, "--classifier", safeguard.url)
    assert cli(*base, "--min-f1", "0.5").code == 0
    assert cli(*base, "--min-f1", "0.57").code == 0
    failed = cli(*base, "--min-f1", "0.6")
    assert failed.code == 1
    assert "F1 0.571 is below --min-f1 0.6 for cheating (v " in failed.err
    as_json = cli(*base, "--min-f1", "0.6", "--json")
    assert as_json.code == 1
    assert as_json.json()["passed"] is False and as_json.json()["min_f1"] == 0.6


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_min_f1_out_of_range_is_a_usage_error(cli, setup, value) -> None:
    safeguard, policy, cases = setup
    with pytest.raises(SystemExit) as exc:
        cli(
            "policy",
            "test",
            policy,
            "--cases",
            cases,
            "--classifier",
            safeguard.url,
            "--min-f1",
            value,
        )
    assert exc.value.code == 2


@pytest.mark.parametrize(("mode", "kind"), [("error500", "http_error"), ("garbage", "unparseable")])
def test_classifier_errors_are_reported_not_counted_as_safe(cli, setup, mode, kind) -> None:
    safeguard, policy, cases = setup
    safeguard.fake.mode = mode
    base = ("policy", "test", policy, "--cases", cases, "--classifier", safeguard.url)
    result = cli(*base, "--json", "--min-f1", "0")
    assert result.code == 2  # the classifier answered no case at all
    m = result.json()["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["errors"]) == (0, 0, 0, 0, 8)
    assert m["f1"] is None and m["accuracy"] is None
    errors = result.json()["errors"]
    assert [e["index"] for e in errors] == list(range(1, 9))
    assert all(e["error"].startswith(kind) for e in errors)
    assert "the classifier answered none of the 8 cases" in result.err
    text = cli(*base)
    assert text.code == 2
    assert "classifier errors (8 of 8 cases, not scored)" in text.out
    assert f"#1 (line 1)  {kind}" in text.out
    assert "disagreements: none" in text.out


class BoomClassifier:
    """The fake classifier, except that content containing BOOM gets an HTTP 500."""

    def __init__(self) -> None:
        self.inner = FakeSafeguard()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if b"BOOM" in body:
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"object": "error", "code": 500}'})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.inner(scope, replay, send)


@pytest.fixture(scope="module")
def boom_server() -> Iterator[ServerHandle]:
    handle = serve(BoomClassifier())
    yield handle
    handle.stop()


def test_some_errored_cases_are_listed_and_left_out_of_the_metrics(
    cli, write_policy, write_cases, boom_server
) -> None:
    policy = write_policy("cheating", "aimbot", "CH1")
    cases = write_cases([("aimbot", 1), ("BOOM aimbot", 1), ("BOOM hello", 0), ("hello", 0)])
    base = ("policy", "test", policy, "--cases", cases, "--classifier", boom_server.url + "/v1")
    result = cli(*base, "--json", "--min-f1", "1")
    assert result.code == 0
    m = result.json()["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["errors"], m["scored"]) == (1, 0, 0, 1, 2, 2)
    assert [e["index"] for e in result.json()["errors"]] == [2, 3]
    assert "2 of 4 cases could not be classified" in result.err
    text = cli(*base)
    assert "classifier errors (2 of 4 cases, not scored)" in text.out
    assert "#2 (line 2)  http_error: HTTP 500" in text.out


def write_config(path: Path, classifier_url: str, policies_dir: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "upstreams: {main: {base_url: 'http://127.0.0.1:9/v1'}}\n"
        f"classifier: {{base_url: '{classifier_url}', model: m-test, reasoning_effort: medium}}\n"
        f"policies_dir: {policies_dir}\n"
        "tenants: {t: {keys: [k-test], route: r}}\n"
        "routes: {r: {upstream: main}}\n"
    )
    return path


def test_default_config_supplies_classifier_and_policies_dir(
    cli, safeguard, write_policy, write_cases, tmp_path
) -> None:
    write_policy("cheating", "aimbot", folder=tmp_path / "pols")
    cases = write_cases([("aimbot", 1), ("hello", 0)])
    write_config(tmp_path / "config" / "gateway.yaml", safeguard.url, "pols")
    result = cli("policy", "test", "cheating", "--cases", cases, "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["classifier"] == {
        "base_url": safeguard.url,
        "model": "m-test",
        "reasoning_effort": "medium",
    }
    assert doc["metrics"]["f1"] == 1.0
    assert {c.reasoning_effort for c in safeguard.fake.calls} == {"medium"}


def test_explicit_config_and_reasoning_effort_override(
    cli, safeguard, write_policy, write_cases, tmp_path
) -> None:
    write_policy("spam", "buy now", folder=tmp_path / "elsewhere" / "pols")
    config = write_config(
        tmp_path / "elsewhere" / "gw.yaml", safeguard.url, str(tmp_path / "elsewhere" / "pols")
    )
    cases = write_cases([("buy now!", 1)])
    result = cli(
        "policy", "test", "spam", "--cases", cases, "--config", config, "--reasoning-effort", "high"
    )
    assert result.code == 0, result.err
    assert {c.reasoning_effort for c in safeguard.fake.calls} == {"high"}


def test_bare_classifier_host_gets_v1(cli, setup) -> None:
    safeguard, policy, cases = setup
    result = cli("policy", "test", policy, "--cases", cases, "--classifier", safeguard.handle.url)
    assert result.code == 0, result.err
    assert f"at {safeguard.url}," in result.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no classifier configured: pass --classifier URL"),
        (("--classifier", "ftp://x"), "--classifier must be an http(s) URL"),
        (("--config", "missing.yaml"), "cannot read config missing.yaml"),
    ],
)
def test_setup_problems_exit_2(cli, setup, argv, message) -> None:
    _, policy, cases = setup
    result = cli("policy", "test", policy, "--cases", cases, *argv)
    assert result.code == 2
    assert message in result.err


def test_missing_policy_and_bad_cases_exit_2(cli, setup, tmp_path) -> None:
    safeguard, policy, cases = setup
    unknown = cli(
        "policy", "test", "no-such-policy", "--cases", cases, "--classifier", safeguard.url
    )
    assert unknown.code == 2
    assert "no-such-policy" in unknown.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "a", "label": 1}\n{"content": "b"}\n')
    result = cli("policy", "test", policy, "--cases", bad, "--classifier", safeguard.url)
    assert result.code == 2
    assert "bad.jsonl:2: missing 'label'" in result.err
    assert safeguard.fake.calls == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_in_place_and_clears() -> None:
    stream = Terminal()
    bar = ProgressBar(stream, width=10)
    bar(1, 4)
    bar(4, 4)
    bar.close()
    text = stream.getvalue()
    assert "\rclassifying [##--------] 1/4" in text
    assert "\rclassifying [##########] 4/4" in text
    assert text.endswith("\r\033[K")
