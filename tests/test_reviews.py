"""Reviews in the audit store and the golden-set cases they make (proxy.reviews)."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from proxy.audit_schema import SCHEMA_VERSION
from proxy.audit_store import audit_row, insert_rows, open_store
from proxy.config import ConfigError, parse_config
from proxy.reviews import (
    ReviewError,
    case_text,
    export_cases,
    for_request,
    save,
)
from proxy.workbench.cases import parse_jsonl


def record(text: str, label: str, *, retention: str = "full", side: str = "input") -> dict:
    return {
        "request_id": f"req-{text[:8]}",
        "time": 1.0,
        "tenant": "acme",
        "decision": "block" if label == "violation" else "allow",
        "verdicts": [
            {"policy": "spam", "version": "v1", "label": label, "category": "SP1", "side": side},
            {"policy": "spam-v2", "version": "v2", "label": "safe", "side": side, "shadow": True},
        ],
        "content": {"retention": retention, "input": f"[user] {text}", "output": "an answer"},
    }


@pytest.fixture
def conn(tmp_path: Path):
    with closing(open_store(tmp_path / "audit.db")) as c:
        insert_rows(
            c,
            [
                audit_row(record("buy now, cheap pills", "violation")),
                audit_row(record("hello there", "safe")),
                audit_row(record("buy now hashed", "violation", retention="hash")),
                audit_row(record("x", "error")),
            ],
        )
        yield c


def test_marks_become_cases_policy_test_reads(conn):
    save(conn, 1, 0, "correct", "", "admin:1")
    save(conn, 2, 0, "wrong", "  says hello but is spam  ", "reviewer:2")
    save(conn, 1, 1, "wrong", "", "reviewer:2")  # the shadow said safe: wrong -> spam
    save(conn, 3, 0, "correct", "", "admin:1")  # hashed content: no case
    save(conn, 4, 0, "correct", "", "admin:1")  # a failed check: no case
    save(conn, 2, 1, "unsure", "", "admin:1")  # unsure: no case
    cases = list(export_cases(conn))
    assert [(c["content"], c["label"], c["policy"], c.get("category")) for c in cases] == [
        ("buy now, cheap pills", 1, "spam", "SP1"),
        ("hello there", 1, "spam", None),
        ("buy now, cheap pills", 1, "spam-v2", None),
    ]
    assert cases[1]["note"] == "says hello but is spam"
    assert [c["content"] for c in export_cases(conn, policy="spam-v2")] == ["buy now, cheap pills"]
    text = "".join(json.dumps(c) + "\n" for c in cases)
    assert [(c.content, c.label) for c in parse_jsonl(text)] == [
        (c["content"], c["label"]) for c in cases
    ]


def test_the_latest_mark_wins_and_bad_reviews_are_refused(conn):
    save(conn, 1, 0, "correct", "first", "admin:1", now=10)
    save(conn, 1, 0, "wrong", "second", "reviewer:2", now=20)
    (only,) = for_request(conn, 1).values()
    assert (only.mark, only.note, only.reviewer, only.time) == ("wrong", "second", "reviewer:2", 20)
    assert conn.execute("SELECT COUNT(*) FROM reviews").fetchone() == (1,)
    for args in ((1, 0, "maybe"), (99, 0, "wrong"), (1, 7, "wrong")):
        with pytest.raises(ReviewError):
            save(conn, *args, "", "admin:1")


def test_a_store_without_reviews_exports_nothing(tmp_path: Path):
    with closing(open_store(tmp_path / "plain.db")) as c:
        assert list(export_cases(c)) == [] and for_request(c, 1) == {}


def test_case_text_strips_the_label_of_one_turn_only():
    assert case_text("[user] hello\nthere") == "hello\nthere"
    convo = "[system] be nice\n\n[user] hello"
    assert case_text(convo) == convo
    assert case_text("plain output") == "plain output"


def test_config_takes_reviewer_keys_and_a_trace_url():
    base = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}},
        "tenants": {"t": {"keys": ["k"], "route": "r"}},
        "routes": {"r": {"upstream": "u"}},
    }
    config = parse_config(
        base
        | {
            "admin": {"keys": ["a"], "reviewer_keys": ["r1", ""]},
            "telemetry": {"trace_url": "http://jaeger:16686/trace/{trace_id}"},
        }
    )
    assert config.reviewer_keys == ("r1",)
    assert config.telemetry.trace_url.endswith("{trace_id}")
    with pytest.raises(ConfigError, match=r"telemetry\.trace_url"):
        parse_config(base | {"telemetry": {"trace_url": "javascript:alert(1)"}})
    with pytest.raises(ConfigError, match=r"admin\.reviewer_keys"):
        parse_config(base | {"admin": {"reviewer_keys": "r1"}})


# What open_store made before reviews joined the schema (version 1).
V1_SQLITE = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY, request_id TEXT, time REAL, tenant TEXT, route TEXT,
    endpoint TEXT, model TEXT, decision TEXT, status INTEGER, record TEXT NOT NULL
);
CREATE TABLE verdicts (
    request INTEGER NOT NULL REFERENCES requests(id), policy TEXT, version TEXT, side TEXT,
    label TEXT, category TEXT, action TEXT, shadow INTEGER NOT NULL DEFAULT 0
);
PRAGMA user_version = 1;
"""


def test_an_older_sqlite_store_gains_the_reviews_table_when_the_writer_opens_it(tmp_path):
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as c:
        c.executescript(V1_SQLITE)
    with closing(open_store(path)) as c:
        insert_rows(c, [audit_row(record("buy now, cheap pills", "violation"))])
        assert c.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        save(c, 1, 0, "correct", "", "admin:1")
        assert [case["label"] for case in export_cases(c)] == [1]


def test_a_config_of_sha256_keys_is_not_enough_to_forge_a_console_session():
    import hashlib
    import hmac

    from proxy.console.session import Sessions

    digest = hashlib.sha256(b"the admin key").digest()
    sessions = Sessions([f"sha256:{digest.hex()}"], [])
    # What anyone reading the config can compute: a secret from the key digests alone.
    secret = hashlib.sha256(b"safeguard-console/v1\0" + digest).digest()

    def mac(purpose: bytes, data: bytes) -> bytes:
        return hmac.new(secret, purpose + b"\0" + data, hashlib.sha256).digest()

    payload = f"{mac(b'key', digest).hex()}.{int(time.time())}"
    forged = f"{payload}.{mac(b'cookie', payload.encode()).hex()}"
    assert sessions.session(forged) is None
    assert sessions.session(sessions.sign_in("the admin key")).admin  # the real key still works


def test_retention_takes_a_records_reviews_with_it(conn, tmp_path: Path):
    from proxy.audit_backends import SqliteWriter

    save(conn, 1, 0, "correct", "", "admin:1")
    conn.commit()
    writer = SqliteWriter(tmp_path / "audit.db")
    assert writer.purge(before=2.0) == 4  # every record of the fixture is older
    writer.close()
    assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0
