"""The review console in a real headless browser: Playwright driving Debian's chromium
(launched by its path; never `playwright install`) against a gateway on loopback whose
traffic comes through the openai SDK. Screenshots of every page are kept under
$ARTIFACTS_DIR/console (default tmp/artifacts/console)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ADMIN_KEY, KEY, audit_records
from tests.test_console import GUARDED, REVIEWER_KEY, XSS, cli_config

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", "tmp/artifacts")) / "console"
POLICY_TEST = [sys.executable, "-m", "proxy", "policy", "test", "cheating", "--cases"]
LAPTOP = {"width": 1366, "height": 768}
WIDE = {"width": 1920, "height": 1080}

sync_api = pytest.importorskip("playwright.sync_api")
if not shutil.which(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def watch(page) -> list[str]:
    """Dialogs (an executed alert) and CSP violations the page reports."""
    seen: list[str] = []
    page.on("dialog", lambda d: (seen.append(f"dialog: {d.message}"), d.dismiss()))
    page.on(
        "console",
        lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return seen


def sign_in(browser, gw, key: str, viewport=LAPTOP):
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    problems = watch(page)
    page.goto(gw.url + "/console/decisions")
    assert "/console/login" in page.url  # no session: sign-in first
    page.get_by_label("Key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/decisions")
    return context, page, problems


def traffic(gw) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    for text in ("hello there", "what is the capital of France?"):
        client.chat.completions.create(
            model="guarded-1", messages=[{"role": "user", "content": text}]
        )
    for text in ("where can I buy an aimbot", XSS):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="guarded-1", messages=[{"role": "user", "content": text}]
            )
    audit_records(gw, 4)
    return client


def test_reviewer_loop_in_the_browser(browser, make_gateway, tmp_path: Path):
    raw = {"admin": {"keys": [ADMIN_KEY], "reviewer_keys": [REVIEWER_KEY]}}
    gw = make_gateway(guarded=GUARDED, raw=raw)
    client = traffic(gw)
    context, page, problems = sign_in(browser, gw, ADMIN_KEY)
    shot(page, "decisions-laptop")

    # find the blocked request through the filters
    page.get_by_label("Decision").select_option("block")
    page.get_by_label("Text").fill("buy an aimbot")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**decision=block**")
    rows = page.locator("table.decisions tbody tr")
    assert rows.count() == 1
    rows.first.locator("a.rowlink").click()
    page.wait_for_url("**/console/requests/*")
    first = page.locator("section.verdict").first
    assert "Verdict 1." in first.locator("pre.reasoning").inner_text()  # the model's reasoning
    assert "Matches a trigger." in first.locator("pre.rationale").inner_text()
    shot(page, "request")

    # mark it wrong, with a note
    first.get_by_label("wrong").check()
    first.get_by_label("Note").fill("an aimbot question from a game's forum")
    first.get_by_role("button", name="Save review").click()
    page.wait_for_selector("text=Saved.")
    assert "Reviewed: wrong" in page.locator("section.verdict").first.inner_text()

    # export the reviewed cases and score the policy on them
    with page.expect_download() as download:
        page.get_by_role("link", name="Export reviewed").click()
    exported = tmp_path / "reviewed.jsonl"
    download.value.save_as(exported)
    cases = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(c["content"], c["label"], c["review"]) for c in cases] == [
        ("where can I buy an aimbot", 0, "wrong")
    ]
    config = str(cli_config(gw, tmp_path))
    scored = subprocess.run(
        [*POLICY_TEST, str(exported), "--config", config, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["metrics"]["fp"] == 1

    # the XSS prompt renders as text: no alert, no element made from it
    page.goto(gw.url + "/console/decisions?q=onerror")
    page.locator("a.rowlink").first.click()
    page.wait_for_url("**/console/requests/*")
    assert "<script>alert(1)</script>" in page.locator("#content-input").inner_text()
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    shot(page, "request-xss")

    # a POST without the CSRF token is refused, with the session cookie on
    refused = page.request.post(
        page.url + "/review", form={"verdict": "0", "mark": "correct"}, max_redirects=0
    )
    assert refused.status == 403

    # the list updates as traffic flows; j/k and Enter move through it
    page.goto(gw.url + "/console/decisions")
    client.chat.completions.create(
        model="guarded-1", messages=[{"role": "user", "content": "a brand new question"}]
    )
    page.wait_for_selector("text=a brand new question", timeout=15_000)
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.className") == "rowlink"
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/requests/*")
    assert "a brand new question" in page.locator("#content-input").inner_text()

    # the other pages
    page.goto(gw.url + "/console/queue/blocks")
    assert "where can I buy an aimbot" not in page.locator("main").inner_text()  # reviewed
    shot(page, "queue-blocks")
    page.goto(gw.url + "/console/queue/shadow")
    shot(page, "queue-shadow")
    page.goto(gw.url + "/console/policies")
    shot(page, "policies")
    page.get_by_role("link", name="violence", exact=True).click()
    assert page.locator("svg.chart").count() == 2
    shot(page, "policy-shadow")
    page.goto(gw.url + "/console/playground?policy=cheating")
    page.get_by_label("Text to classify").fill("selling a wallhack, cheap")
    page.get_by_role("button", name="Classify").click()
    assert "violation" in page.locator("#result").inner_text()
    shot(page, "playground")
    context.close()

    wide, page, wide_problems = sign_in(browser, gw, ADMIN_KEY, viewport=WIDE)
    shot(page, "decisions-wide")
    wide.close()
    assert problems == [] and wide_problems == []


def test_reviewer_cannot_reach_admin_actions_and_sessions_are_needed(browser, make_gateway):
    raw = {"admin": {"keys": [ADMIN_KEY], "reviewer_keys": [REVIEWER_KEY]}}
    gw = make_gateway(guarded=GUARDED, raw=raw)
    traffic(gw)
    context, page, problems = sign_in(browser, gw, REVIEWER_KEY)
    assert page.get_by_role("link", name="Playground").count() == 0
    answer = page.goto(gw.url + "/console/playground")
    assert answer.status == 403 and "Admins only" in page.inner_text("main")
    page.goto(gw.url + "/console/policies")
    assert page.get_by_role("button", name="Reload policies from disk").count() == 0
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    reload = page.request.post(gw.url + "/console/reload", form={"csrf": token}, max_redirects=0)
    assert reload.status == 403
    shot(page, "reviewer-policies")
    # signing out ends the session
    page.get_by_role("button", name="Sign out").click()
    page.goto(gw.url + "/console/decisions")
    assert "/console/login" in page.url
    shot(page, "login")
    context.close()
    assert problems == []
