from __future__ import annotations

import argparse
import sqlite3
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from proxy.audit_cli import follow, register
from proxy.audit_store import (
    Filters,
    audit_row,
    connect_readonly,
    insert_rows,
    open_store,
    query,
    stats,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def verdict(policy: str, label: str, *, shadow: bool = False, side: str = "input") -> dict:
    return {
        "policy": policy,
        "version": "abc123",
        "label": label,
        "category": "P1" if label == "violation" else None,
        "rationale": "because",
        "reasoning": "thinking",
        "source": "model",
        "cache_hit": False,
        "latency_ms": 3.0,
        "error": "timeout" if label == "error" else None,
        "shadow": shadow,
        "side": side,
        "action": "block",
    }


def record(n: int, **fields) -> dict:
    return {
        "request_id": f"req-{n}",
        "time": T0 + n,
        "tenant": "acme",
        "route": "default",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "stream": False,
        "decision": "allow",
        "status": 200,
        "verdicts": [verdict("pii", "safe"), verdict("pii-v2", "safe", shadow=True)],
        "timings": {"classifier_ms": 1.0, "upstream_ms": 2.0, "total_ms": 3.5, "ttft_ms": None},
        "error": None,
        "content": {"retention": "none", "input": None, "output": None},
    } | fields


RECORDS = [
    record(10),
    record(
        20,
        decision="block",
        status=400,
        verdicts=[verdict("pii", "violation"), verdict("pii-v2", "violation", shadow=True)],
    ),
    record(30, tenant="beta", model="llama-3"),
    record(
        40,
        decision="error",
        status=503,
        verdicts=[verdict("pii", "error"), verdict("pii-v2", "violation", shadow=True)],
    ),
]


@pytest.fixture
def config(tmp_path) -> Path:
    db = tmp_path / "data" / "audit.db"
    with closing(open_store(db)) as conn:
        insert_rows(conn, [audit_row(r) for r in RECORDS])
    return write_config(tmp_path, db)


def write_config(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "upstreams: {default: {base_url: 'http://127.0.0.1:9'}}\n"
        "routes: {default: {upstream: default}}\n"
        "tenants: {acme: {keys: [k-1], route: default}}\n"
        f"audit: {{path: '{db}', content: none}}\n"
    )
    return path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="safeguard-gateway")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv])
    return args.func(args)


def json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_query_table(config, capsys):
    assert run("query", "--config", str(config)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "TIME",
        "REQUEST",
        "ID",
        "TENANT",
        "ROUTE",
        "MODEL",
        "DECISION",
        "STATUS",
        "FLAGGED",
    ]
    assert [line.split()[1] for line in out[1:]] == ["req-40", "req-30", "req-20", "req-10"]
    assert out[3].split() == [
        "2023-11-14T22:13:40Z",
        "req-20",
        "acme",
        "default",
        "gpt-4o-mini",
        "block",
        "400",
        "pii,",
        "pii-v2(shadow)",
    ]
    assert out[1].split()[-2:] == ["pii(error),", "pii-v2(shadow)"]
    assert out[2].split()[-1] == "-"  # nothing flagged


def test_query_json_filters_and_paging(config, capsys):
    assert run("query", "--config", str(config), "--json") == 0
    assert json_lines(capsys.readouterr().out) == RECORDS[::-1]

    run("query", "--config", str(config), "--json", "--tenant", "beta")
    assert [r["request_id"] for r in json_lines(capsys.readouterr().out)] == ["req-30"]
    run("query", "--config", str(config), "--json", "--decision", "block,error", "--policy", "pii")
    assert [r["request_id"] for r in json_lines(capsys.readouterr().out)] == ["req-40", "req-20"]
    run(
        "query",
        "--config",
        str(config),
        "--json",
        "--since",
        str(T0 + 20),
        "--until",
        "2023-11-14T22:14:00Z",
    )
    assert [r["request_id"] for r in json_lines(capsys.readouterr().out)] == ["req-30", "req-20"]
    run(
        "query",
        "--config",
        str(config),
        "--json",
        "--limit",
        "1",
        "--offset",
        "1",
        "--oldest-first",
    )
    assert [r["request_id"] for r in json_lines(capsys.readouterr().out)] == ["req-20"]


def test_no_matches_says_so(config, capsys):
    assert run("query", "--config", str(config), "--tenant", "nobody") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no matching audit records" in captured.err


def test_tail_prints_the_last_n_oldest_first(config, capsys):
    assert run("tail", "--config", str(config), "-n", "2", "--json") == 0
    assert [r["request_id"] for r in json_lines(capsys.readouterr().out)] == ["req-30", "req-40"]
    assert run("tail", "--config", str(config), "--follow", "--polls", "1", "--interval", "0") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("TIME") and lines[-1].split()[1] == "req-40"


def test_follow_yields_records_stored_later(config):
    db = str(config.parent / "data" / "audit.db")
    arrivals = iter([[record(50)], [], [record(5, tenant="beta"), record(60)]])

    def sleep(_: float) -> None:  # each poll: another writer stores a batch meanwhile
        with closing(open_store(db)) as conn:
            insert_rows(conn, [audit_row(r) for r in next(arrivals)])

    with closing(connect_readonly(db)) as conn:
        last = conn.execute("SELECT MAX(id) FROM requests").fetchone()[0]
        batches = list(follow(conn, Filters(), last, interval=0, polls=3, sleep=sleep))
        beta = list(follow(conn, Filters(tenant="beta"), last, interval=0, polls=0, sleep=sleep))
    # in storage order, so a request that started earlier but finished later is not missed
    assert [[r["request_id"] for r in b] for b in batches] == [["req-50"], ["req-5", "req-60"]]
    assert beta == []


def test_export_to_stdout_and_file(config, capsys, tmp_path):
    assert run("export", "--config", str(config)) == 0
    assert json_lines(capsys.readouterr().out) == RECORDS  # oldest first, full records
    out = tmp_path / "export.jsonl"
    assert run("export", "--config", str(config), "--out", str(out), "--decision", "allow") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "exported 2 records" in captured.err
    assert [r["request_id"] for r in json_lines(out.read_text())] == ["req-10", "req-30"]


def test_stats_json_and_table(config, capsys):
    db = config.parent / "data" / "audit.db"
    assert run("stats", "--config", str(config), "--json") == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report == stats(db)
    assert report["decisions"] == {"allow": 2, "block": 1, "error": 1}
    [pair] = report["agreement"]
    # req-10, req-30 both safe; req-20 both flag; req-40 enforced errored
    assert (pair["pairs"], pair["compared"], pair["agree"], pair["errors"]) == (4, 3, 3, 1)

    assert run("stats", "--config", str(config)) == 0
    text = capsys.readouterr().out
    assert text.startswith("4 requests from 2023-11-14T22:13:30Z to 2023-11-14T22:14:00Z")
    assert "decisions per tenant" in text and "shadow vs enforced agreement" in text
    acme = next(line for line in text.splitlines() if line.startswith("acme"))
    assert acme.split() == ["acme", "3", "1", "0", "0", "1", "1"]
    pair_line = text.split("shadow vs enforced agreement\n")[1].splitlines()[1]
    assert pair_line.split()[:5] == ["pii-v2", "pii", "input", "4", "100.0%"]

    assert run("stats", "--config", str(config), "--json", "--tenant", "beta") == 0
    assert orjson.loads(capsys.readouterr().out)["requests"] == 1


def test_missing_store_is_one_line_exit_2(tmp_path, capsys):
    config = write_config(tmp_path, tmp_path / "nowhere" / "audit.db")
    for command in ("tail", "query", "export", "stats"):
        assert run(command, "--config", str(config)) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and "error: no audit store at" in captured.err
    assert not (tmp_path / "nowhere").exists()  # reading never creates the store


def test_usage_errors_exit_2(config, tmp_path, capsys, monkeypatch):
    assert run("query", "--config", str(tmp_path / "missing.yaml")) == 2
    assert capsys.readouterr().err.startswith("error: config: cannot read config")
    assert run("query", "--config", str(config), "--since", "last tuesday") == 2
    assert "not a time" in capsys.readouterr().err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    assert run("query", "--config", str(write_config(tmp_path, garbage))) == 2
    assert "cannot read audit store" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert run("query") == 2  # --config defaults to config/gateway.yaml, like serve's
    assert "cannot read config config/gateway.yaml" in capsys.readouterr().err


def test_config_defaults_to_the_one_serve_uses(config, tmp_path, capsys, monkeypatch):
    (tmp_path / "config").mkdir()
    config.rename(tmp_path / "config" / "gateway.yaml")
    monkeypatch.chdir(tmp_path)
    for command in ("tail", "query", "export", "stats"):
        assert run(command) == 0, command
    assert "shadow vs enforced agreement" in capsys.readouterr().out


def stats_pairs(config: Path, routes: str, capsys) -> list[tuple[str, str, str]]:
    """`audit stats --json` agreement pairs with the config's routes replaced."""
    text = config.read_text().replace("routes: {default: {upstream: default}}", routes)
    config.write_text(text + f"policies_dir: '{config.parent / 'policies'}'\n")
    assert run("stats", "--config", str(config), "--json") == 0
    report = orjson.loads(capsys.readouterr().out)
    return [(a["shadow_policy"], a["enforced_policy"], a["side"]) for a in report["agreement"]]


SHADOWED = [
    record(
        n,
        verdicts=[
            verdict("pii", "safe"),
            verdict("spam", "violation"),
            verdict("pii-v2", "safe", shadow=True),
            verdict("spam-v2", "violation", shadow=True),
        ],
    )
    for n in (50, 60)
]


@pytest.fixture
def shadowed(tmp_path) -> Path:
    db = tmp_path / "data" / "audit.db"
    with closing(open_store(db)) as conn:
        insert_rows(conn, [audit_row(r) for r in SHADOWED])
    (tmp_path / "policies").mkdir()
    for pid in ("pii", "spam", "pii-v2", "spam-v2"):
        (tmp_path / "policies" / f"{pid}.md").write_text(f"---\nid: {pid}\n---\nFlag it.\n")
    return write_config(tmp_path, db)


def test_stats_pair_a_shadow_with_the_policy_at_its_position(shadowed, capsys):
    routes = (
        "routes: {default: {upstream: default, input: "
        "{policies: [pii, spam], shadow: [pii-v2, spam-v2]}}}"
    )
    assert sorted(stats_pairs(shadowed, routes, capsys)) == [
        ("pii-v2", "pii", "input"),
        ("spam-v2", "spam", "input"),
    ]


def test_stats_pair_a_shadow_with_the_policy_it_declares(shadowed, capsys):
    spam_v2 = shadowed.parent / "policies" / "spam-v2.md"
    spam_v2.write_text("---\nid: spam-v2\nshadows: spam\n---\nFlag it.\n")
    routes = (
        "routes: {default: {upstream: default, input: {policies: [pii, spam], shadow: [spam-v2]}}}"
    )
    pairs = stats_pairs(shadowed, routes, capsys)
    assert [p for p in pairs if p[0] == "spam-v2"] == [("spam-v2", "spam", "input")]
    # pii-v2 is on no route any more: its old records keep every pairing, as before
    assert sorted(p[1] for p in pairs if p[0] == "pii-v2") == ["pii", "spam"]


def test_reading_while_the_writer_holds_the_store(config):
    db = config.parent / "data" / "audit.db"
    with closing(open_store(db)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # a write transaction in progress
        writer.execute("DELETE FROM requests")
        assert len(query(db)) == 4  # WAL readers see the last committed state
        writer.rollback()
    with closing(connect_readonly(db)) as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM requests")  # readers cannot write
