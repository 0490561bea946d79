"""The review console's server side over plain HTTP: sign-in, sessions, CSRF, roles,
escaping, reviews and their export (the browser tests are in test_console_browser.py)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from proxy.console.session import Sessions
from tests.conftest import ADMIN_KEY, KEY, audit_records

REVIEWER_KEY = "sk-reviewer-test-key"
GUARDED = {
    "upstream": "main",
    "input": {"policies": ["cheating"], "shadow": ["violence"]},
}
XSS = "aimbot <script>alert(1)</script><img src=x onerror=alert(2)>"


def start(make_gateway, **telemetry):
    raw = {"admin": {"keys": [ADMIN_KEY], "reviewer_keys": [REVIEWER_KEY]}}
    if telemetry:
        raw["telemetry"] = telemetry
    return make_gateway(guarded=GUARDED, raw=raw)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(gw, key: str = ADMIN_KEY) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, timeout=10)
    form = client.get("/console/login")
    answer = client.post("/console/login", data={"key": key, "csrf": csrf_of(form.text)})
    assert answer.status_code == 303, answer.text
    return client


def blocked_request(gw, text: str = "I need an aimbot") -> str:
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="guarded-1", messages=[{"role": "user", "content": text}]
        )
    return caught.value.response.headers["x-request-id"]


def row_of(gw, request_id: str) -> int:
    audit_records(gw, 1, request_id=request_id)
    import sqlite3

    with sqlite3.connect(gw.config.audit.path) as conn:
        (row,) = conn.execute(
            "SELECT id FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
    return row


def cli_config(gw, tmp_path: Path) -> Path:
    """A config for the CLI reading this gateway's audit store, classifier and policies."""
    path = tmp_path / "cli.yaml"
    data = {
        "upstreams": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
        "classifier": {"base_url": gw.config.classifier.base_url},
        "policies_dir": gw.config.policies_dir,
        "tenants": {"acme": {"keys": [KEY], "route": "open"}},
        "routes": {"open": {"upstream": "main"}},
        "audit": {"path": gw.config.audit.path},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_without_a_session_every_page_redirects_to_sign_in(make_gateway):
    gw = start(make_gateway)
    with httpx.Client(base_url=gw.url) as client:
        for path in ("/console/decisions", "/console/requests/1", "/console/policies"):
            answer = client.get(path + "?tenant=acme")
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/console/login?next=")
        answer = client.post("/console/requests/1/review", data={"mark": "wrong"})
        assert answer.status_code == 303
        # a forged cookie is no session
        client.cookies.set("sg_console", "00.1.00", path="/console")
        assert client.get("/console/decisions").status_code == 303


def test_sign_in_sets_a_strict_http_only_cookie_and_a_strict_csp(make_gateway):
    gw = start(make_gateway)
    with httpx.Client(base_url=gw.url) as client:
        form = client.get("/console/login")
        assert "default-src 'self'" in form.headers["content-security-policy"]
        assert "script-src 'self'" in form.headers["content-security-policy"]
        bad = client.post("/console/login", data={"key": "sk-wrong", "csrf": csrf_of(form.text)})
        assert bad.status_code == 401
        # the sign-in form itself needs its token
        stale = client.post("/console/login", data={"key": ADMIN_KEY})
        assert stale.status_code == 401 and "expired" in stale.text
        form = client.get("/console/login?next=/console/policies")
        answer = client.post(
            "/console/login",
            data={"key": ADMIN_KEY, "csrf": csrf_of(form.text), "next": "/console/policies"},
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/console/policies"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert ADMIN_KEY not in answer.headers["set-cookie"]
        assert client.get("/console/policies").status_code == 200
        # an open redirect is not followed off-site
        form = client.get("/console/login")
        away = client.post(
            "/console/login",
            data={"key": ADMIN_KEY, "csrf": csrf_of(form.text), "next": "//evil.example/"},
        )
        assert away.headers["location"] == "/console/decisions"


def test_blocked_request_shows_its_reasoning_and_audited_text_renders_as_text(make_gateway):
    gw = start(make_gateway)
    request_id = blocked_request(gw, XSS)
    row = row_of(gw, request_id)
    client = sign_in(gw)
    listing = client.get("/console/decisions", params={"decision": "block"})
    assert f"/console/requests/{row}" in listing.text
    page = client.get(f"/console/requests/{row}")
    assert page.status_code == 200
    assert "not traced" in page.text  # traces off: no trace id kept, no link
    assert audit_records(gw, 1, request_id=request_id)[0]["trace_id"] is None
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert html.escape("<script>alert(1)</script>", quote=False) in page.text
    assert "Verdict 1." in page.text  # the fake model's reasoning
    assert "Matches a trigger." in page.text and "CH2" in page.text
    assert "violence" in page.text and "shadow" in page.text  # the shadow verdict too
    # free text search over kept content
    found = client.get("/console/decisions", params={"q": "ONERROR=alert(2)"})
    assert f"/console/requests/{row}" in found.text
    missing = client.get("/console/decisions", params={"q": "no such words here"})
    assert f"/console/requests/{row}" not in missing.text


def test_review_needs_the_csrf_token_and_becomes_a_case(make_gateway, tmp_path: Path):
    gw = start(make_gateway)
    row = row_of(gw, blocked_request(gw, "teach me to use a wallhack"))
    client = sign_in(gw)
    page = client.get(f"/console/requests/{row}").text
    refused = client.post(f"/console/requests/{row}/review", data={"verdict": "0", "mark": "wrong"})
    assert refused.status_code == 403
    forged = client.post(
        f"/console/requests/{row}/review", data={"verdict": "0", "mark": "wrong", "csrf": "x" * 40}
    )
    assert forged.status_code == 403
    saved = client.post(
        f"/console/requests/{row}/review",
        data={"verdict": "0", "mark": "wrong", "note": "asks about a game", "csrf": csrf_of(page)},
    )
    assert saved.status_code == 303
    again = client.get(saved.headers["location"]).text
    assert "Reviewed: wrong" in again and "asks about a game" in again
    # it left the queue of unreviewed blocks, and the queue's live rows keep to the queue
    queue = client.get("/console/queue/blocks").text
    assert f"/console/requests/{row}" not in queue
    assert 'data-live="/console/decisions/rows?queue=blocks"' in queue
    live = client.get("/console/decisions/rows", params={"queue": "blocks"}).text
    assert f"/console/requests/{row}" not in live and "No matching requests" in live
    assert f"/console/requests/{row}" in client.get("/console/decisions/rows").text
    export = client.get("/console/export.jsonl", params={"policy": "cheating"})
    cases = [json.loads(line) for line in export.text.splitlines()]
    assert cases == [
        {
            "content": "teach me to use a wallhack",
            "label": 0,
            "policy": "cheating",
            "policy_version": gw.gateway.policies["cheating"].version,
            "side": "input",
            "request_id": cases[0]["request_id"],
            "review": "wrong",
            "note": "asks about a game",
        }
    ]
    # the CLI twin writes the same cases, and `policy test` reads them as they are
    config = cli_config(gw, tmp_path)
    out = tmp_path / "cases.jsonl"
    cli = [sys.executable, "-m", "proxy"]
    done = subprocess.run(
        [*cli, "audit", "export", "--reviewed", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == cases
    scored = subprocess.run(
        [
            *cli,
            "policy",
            "test",
            "cheating",
            "--cases",
            str(out),
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout)
    # the model still flags it, the reviewer said safe: one false positive to fix
    assert report["metrics"]["fp"] == 1 and report["metrics"]["scored"] == 1
    assert report["disagreements"][0]["content"] == "teach me to use a wallhack"


def test_reviewer_labels_but_cannot_reach_admin_actions(make_gateway):
    gw = start(make_gateway)
    row = row_of(gw, blocked_request(gw))
    client = sign_in(gw, REVIEWER_KEY)
    page = client.get(f"/console/requests/{row}").text
    token = csrf_of(page)
    assert "Playground" not in page
    assert client.get("/console/playground").status_code == 403
    denied = client.post("/console/playground", data={"csrf": token, "policy": "cheating"})
    assert denied.status_code == 403
    assert client.post("/console/reload", data={"csrf": token}).status_code == 403
    assert "Reload policies" not in client.get("/console/policies").text
    saved = client.post(
        f"/console/requests/{row}/review", data={"verdict": "0", "mark": "correct", "csrf": token}
    )
    assert saved.status_code == 303
    assert "by reviewer:" in client.get(saved.headers["location"]).text
    # the admin can reload and use the playground
    admin = sign_in(gw)
    token = csrf_of(admin.get("/console/policies").text)
    reloaded = admin.post("/console/reload", data={"csrf": token})
    assert reloaded.status_code == 303 and "reloaded=ok" in reloaded.headers["location"]
    ran = admin.post(
        "/console/playground",
        data={"csrf": token, "policy": "cheating", "content": "selling an aimbot"},
    )
    assert ran.status_code == 200 and "violation" in ran.text and "Verdict 1." in ran.text
    edited = admin.post(
        "/console/playground",
        data={
            "csrf": token,
            "text": "Flag <!-- triggers: pony --> content.",
            "content": "a <b>pony</b>",
        },
    )
    assert "violation" in edited.text and "<b>pony" not in edited.text


def test_policy_page_charts_its_history_and_shadow_agreement(make_gateway):
    gw = start(make_gateway)
    blocked_request(gw)
    row_of(gw, blocked_request(gw, "aimbot and kill them all"))
    client = sign_in(gw)
    page = client.get("/console/policies/violence")
    assert page.status_code == 200
    assert page.text.count("<svg") == 2  # verdicts per hour, agreement over time
    assert 'class="bar violation"' in page.text and 'class="line"' in page.text
    assert gw.gateway.policies["violence"].version in page.text
    shadow = client.get("/console/queue/shadow").text
    assert "aimbot" in shadow and "kill them all" not in shadow  # only the disagreement
    assert client.get("/console/policies/nope").status_code == 404


def test_trace_id_is_kept_and_linked(make_gateway):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    raw = {
        "admin": {"keys": [ADMIN_KEY]},
        "telemetry": {"trace_url": "http://jaeger.local:16686/trace/{trace_id}"},
    }
    gw = make_gateway(guarded=GUARDED, raw=raw, options={"span_exporter": InMemorySpanExporter()})
    row = row_of(gw, blocked_request(gw))
    (record,) = audit_records(gw, 1)
    assert re.fullmatch(r"[0-9a-f]{32}", record["trace_id"])
    page = sign_in(gw).get(f"/console/requests/{row}").text
    assert f'href="http://jaeger.local:16686/trace/{record["trace_id"]}"' in page


def test_sessions_end_when_forged_expired_or_the_key_is_removed():
    sessions = Sessions(["sk-a"], ["sk-r"])
    cookie = sessions.sign_in("sk-r", now=1000)
    assert sessions.session(cookie, now=1001).role == "reviewer"
    assert sessions.session(cookie, now=1000 + 13 * 3600) is None
    tag, issued, sid, sig = cookie.split(".")
    assert sessions.session(f"{tag}.{int(issued) + 1}.{sid}.{sig}", now=1001) is None
    assert sessions.session(f"{tag}.{issued}.{sid[::-1]}.{sig}", now=1001) is None
    assert Sessions(["sk-a"], []).session(cookie, now=1001) is None
    assert sessions.sign_in("sk-nope") is None
    assert "sk-r" not in cookie


def test_a_signed_out_cookie_is_refused_by_every_worker(make_gateway):
    """Two gateways on one audit store stand for two workers (or pods): signing out on
    one ends the session on both, and a copy of the cookie replayed later is refused."""
    first, second = start(make_gateway), start(make_gateway)
    client = sign_in(first)
    cookie = client.cookies.get("sg_console")
    page = client.get("/console/policies")
    assert page.status_code == 200
    with httpx.Client(base_url=second.url, cookies={"sg_console": cookie}) as other:
        assert other.get("/console/policies").status_code == 200
        out = client.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert "sg_console=" in out.headers["set-cookie"]
        assert other.get("/console/policies").status_code == 303
    with httpx.Client(base_url=first.url, cookies={"sg_console": cookie}) as replay:
        answer = replay.get("/console/decisions")
        assert answer.status_code == 303 and "/console/login" in answer.headers["location"]
    assert sign_in(first).get("/console/policies").status_code == 200  # a new session works


def _login_attempt(client: httpx.Client, key: str, **headers: str) -> httpx.Response:
    form = client.get("/console/login", headers=headers)
    return client.post(
        "/console/login", data={"key": key, "csrf": csrf_of(form.text)}, headers=headers
    )


def test_failed_sign_ins_are_limited_per_address_and_per_key_prefix(make_gateway, monkeypatch):
    monkeypatch.setenv("SAFEGUARD_CONSOLE_COOKIE_SECURE", "0")  # "remote" clients on http
    gw = start(make_gateway)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        # ten failures from one address, each at a different key prefix
        for i in range(10):
            assert _login_attempt(client, f"sk-{i}-guess").status_code == 401
        limited = _login_attempt(client, ADMIN_KEY)  # even the right key, from there
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "sg_console=" not in limited.headers.get("set-cookie", "")
        assert _login_attempt(client, "sk-other-prefix").status_code == 429
        # another address (through the loopback proxy uvicorn trusts) is not limited...
        elsewhere = {"x-forwarded-for": "198.51.100.7"}
        assert _login_attempt(client, ADMIN_KEY, **elsewhere).status_code == 303
        # ...ten addresses failing at one key prefix have their wrong keys refused...
        for i in range(10):
            spread = {"x-forwarded-for": f"198.51.100.{20 + i}"}
            assert _login_attempt(client, f"sk-admin{i}", **spread).status_code == 401
        again = _login_attempt(client, "sk-admin-x", **{"x-forwarded-for": "198.51.100.99"})
        assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1


def test_failures_at_the_admin_prefix_do_not_lock_the_admins_out(make_gateway, monkeypatch):
    monkeypatch.setenv("SAFEGUARD_CONSOLE_COOKIE_SECURE", "0")
    gw = start(make_gateway)
    assert ADMIN_KEY.startswith("sk-admin")
    with httpx.Client(base_url=gw.url, timeout=10) as attacker:
        for i in range(10):
            spread = {"x-forwarded-for": f"203.0.113.{10 + i}"}
            assert _login_attempt(attacker, f"sk-admin-wrong-{i}", **spread).status_code == 401
        wrong = _login_attempt(attacker, "sk-admin-nope", **{"x-forwarded-for": "203.0.113.50"})
        assert wrong.status_code == 429  # the prefix is over the limit for wrong keys
    with httpx.Client(base_url=gw.url, timeout=10) as admin:
        real = _login_attempt(admin, ADMIN_KEY, **{"x-forwarded-for": "203.0.113.77"})
        assert real.status_code == 303 and "sg_console=" in real.headers["set-cookie"]
        assert admin.get("/console/decisions").status_code == 200
    with httpx.Client(base_url=gw.url, timeout=10) as guesser:
        # the per-address limit still holds: an address that failed ten times (at
        # different prefixes) is refused before its key is checked, even the right one
        there = {"x-forwarded-for": "203.0.113.88"}
        for i in range(10):
            assert _login_attempt(guesser, f"sk-{i}-guess", **there).status_code == 401
        out = _login_attempt(guesser, ADMIN_KEY, **there)
        assert out.status_code == 429 and 1 <= int(out.headers["retry-after"]) <= 60
        assert "sg_console=" not in out.headers.get("set-cookie", "")


def test_sign_in_limit_window_slides():
    from proxy.console.limits import SignInLimit

    limit = SignInLimit(most=3, window_s=60)
    for t in (0, 10, 20):
        assert limit.retry_after("10.0.0.1", "sk-x", now=t) == 0
        limit.failed("10.0.0.1", "sk-x", now=t)
    assert limit.retry_after("10.0.0.1", "sk-other", now=30) == 30  # the address is out
    assert limit.retry_after("10.0.0.1", now=30) == 30  # before any key is read, too
    assert limit.retry_after("10.0.0.2", "sk-x", now=30) == 30  # so is the key prefix
    assert limit.retry_after("10.0.0.2", now=30) == 0  # but not that address on its own
    assert limit.retry_after("10.0.0.2", "sk-other", now=30) == 0
    assert limit.retry_after("10.0.0.1", "sk-x", now=60.5) == 0  # the first one has left
    limit.failed("10.0.0.1", "sk-x", now=60.5)
    assert limit.retry_after("10.0.0.1", "sk-x", now=61) == 9  # until the second leaves
    assert limit.retry_after("10.0.0.1", "sk-x", now=70) == 0


def test_session_cookie_is_secure_unless_plain_http_from_loopback(make_gateway, monkeypatch):
    from proxy.console.session import COOKIE_SECURE_ENV, secure_cookie

    assert not secure_cookie("http", "127.0.0.1", None)
    assert not secure_cookie("http", "::1", None)
    assert secure_cookie("https", "127.0.0.1", None)
    assert secure_cookie("http", "127.0.0.1", "https")  # a TLS proxy on the same host
    assert secure_cookie("http", "10.0.0.5", None)  # a proxy or browser elsewhere
    assert secure_cookie("http", "10.0.0.5", "http")  # a header cannot take it away
    assert secure_cookie("http", None, None)
    monkeypatch.setenv(COOKIE_SECURE_ENV, "0")
    assert not secure_cookie("http", "10.0.0.5", None)
    monkeypatch.setenv(COOKIE_SECURE_ENV, "1")
    assert secure_cookie("http", "127.0.0.1", None)
    monkeypatch.delenv(COOKIE_SECURE_ENV)
    gw = start(make_gateway)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        local = _login_attempt(client, ADMIN_KEY)
        assert "secure" not in local.headers["set-cookie"].lower()
        # a browser elsewhere, through a proxy uvicorn trusts: the client is not loopback
        form = client.get("/console/login")
        remote = client.post(
            "/console/login",
            data={"key": ADMIN_KEY, "csrf": csrf_of(form.text)},
            headers={"x-forwarded-for": "203.0.113.9"},
        )
        assert remote.status_code == 303
        assert "; secure" in remote.headers["set-cookie"].lower()
        # served over plain http elsewhere, the browser dropped the form's Secure cookie
        dropped = httpx.post(
            gw.url + "/console/login",
            data={"key": ADMIN_KEY, "csrf": "x"},
            headers={"x-forwarded-for": "203.0.113.9"},
        )
        assert dropped.status_code == 401 and "SAFEGUARD_CONSOLE_COOKIE_SECURE=0" in dropped.text


def test_console_reviews_and_exports_on_postgresql(make_gateway, postgres_server, tmp_path):
    """Same loop on the PostgreSQL audit store: list, request page, review, queue, export
    from the console and from `audit export --reviewed`, policy page."""
    url = postgres_server.new_database()
    raw = {
        "admin": {"keys": [ADMIN_KEY]},
        "audit": {"url": url, "content": "full", "flush_interval_s": 0.05},
    }
    gw = make_gateway(guarded=GUARDED, raw=raw)
    request_id = blocked_request(gw, "any aimbot for sale? <b>bold</b>")
    client = sign_in(gw)
    row = None
    for _ in range(100):  # the recorder writes in the background
        listing = client.get("/console/decisions", params={"q": "aimbot for sale"}).text
        if found := re.search(r'/console/requests/(\d+)"', listing):
            row = int(found.group(1))
            break
        time.sleep(0.05)
    assert row is not None
    page = client.get(f"/console/requests/{row}").text
    assert request_id in page and "Verdict 1." in page and "<b>bold" not in page
    assert f"/console/requests/{row}" in client.get("/console/queue/blocks").text
    saved = client.post(
        f"/console/requests/{row}/review",
        data={"verdict": "0", "mark": "wrong", "note": "pg", "csrf": csrf_of(page)},
    )
    assert saved.status_code == 303
    assert "Reviewed: wrong" in client.get(saved.headers["location"]).text
    assert f"/console/requests/{row}" not in client.get("/console/queue/blocks").text
    exported = [json.loads(x) for x in client.get("/console/export.jsonl").text.splitlines()]
    assert [(c["content"], c["label"], c["note"]) for c in exported] == [
        ("any aimbot for sale? <b>bold</b>", 0, "pg")
    ]
    policy = client.get("/console/policies/violence").text
    assert policy.count("<svg") == 2
    config = tmp_path / "pg.yaml"
    config.write_text(
        yaml.safe_dump(
            yaml.safe_load(cli_config(gw, tmp_path).read_text()) | {"audit": {"url": url}}
        )
    )
    cookie = client.cookies["sg_console"]
    out = client.post("/console/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    replay = httpx.Client(base_url=gw.url, cookies={"sg_console": cookie})
    assert replay.get("/console/decisions").status_code == 303  # signed out in PostgreSQL
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "export", "--reviewed", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x) for x in done.stdout.splitlines()] == exported
