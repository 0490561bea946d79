"""The PostgreSQL audit store against a real, throwaway PostgreSQL server (tests.fakes.engines)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import openai
import orjson
import psycopg

from proxy.audit import AuditLog, stored_row
from proxy.audit_backends import SqliteWriter
from proxy.audit_pg import SCHEMA_VERSION, PgWriter, migrate, pg_sql
from proxy.audit_store import audit_page, query, stats
from proxy.config import Audit
from tests.conftest import ADMIN_KEY, KEY, start_gateway_process, write_config_file
from tests.test_audit import T0, record, sample, wait_for
from tests.test_audit_e2e import sigterm_with_in_flight
from tests.test_guard import GUARDED, chat

VOLATILE = ("request_id", "time", "timings")


def test_placeholders_become_psycopg_style_outside_literals():
    sql = "SELECT COALESCE(x, '?') FROM t WHERE a IN (?,?) AND b LIKE 'a%' AND c = ? % 2"
    assert pg_sql(sql) == (
        "SELECT COALESCE(x, '?') FROM t WHERE a IN (%s,%s) AND b LIKE 'a%' AND c = %s %% 2"
    )


def test_schema_is_created_versioned_and_migrated_once(postgres_server):
    url = postgres_server.new_database()
    PgWriter(url).close()
    PgWriter(url).close()  # a second gateway (or pod) finds it current
    with psycopg.connect(url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM safeguard_schema")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        indexes = {n for (n,) in conn.execute("SELECT indexname FROM pg_indexes")}
        assert migrate(conn) == SCHEMA_VERSION
    assert {"requests_tenant", "requests_route", "requests_decision", "verdicts_policy"} <= indexes


def test_a_version_1_database_is_migrated_to_reviews_and_both_engines_match(
    postgres_server, tmp_path
):
    from proxy.audit_backends import open_writable
    from proxy.audit_schema import POSTGRES, tables_sql
    from proxy.audit_store import audit_row
    from proxy.reviews import export_cases, save

    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:  # what a gateway of version 1 made
        conn.execute(tables_sql(POSTGRES))
        conn.execute("CREATE TABLE safeguard_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO safeguard_schema (version) VALUES (1)")
    writer = PgWriter(url)
    writer.insert([audit_row(r) for r in sample()])
    writer.close()
    with closing(open_writable(Audit(url=url))) as conn:
        save(conn, 2, 0, "wrong", "pg", "admin:1")
        assert [c["note"] for c in export_cases(conn)] == ["pg"]
    lite = SqliteWriter(tmp_path / "a.db")
    lite.close()

    def columns(conn, sql: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for table, column in conn.execute(sql).fetchall():
            found.setdefault(table, []).append(column)
        return found

    with psycopg.connect(url) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM safeguard_schema")] == [1, 2, 3]
        pg = columns(
            conn,
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_name"
            " IN ('requests', 'verdicts', 'reviews', 'console_logouts')"
            " ORDER BY table_name, ordinal_position",
        )
    with closing(sqlite3.connect(tmp_path / "a.db")) as conn:
        sqlite = columns(
            conn,
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p"
            " WHERE m.type = 'table' ORDER BY m.name, p.cid",
        )
    assert pg == sqlite and set(pg) == {"requests", "verdicts", "reviews", "console_logouts"}


def test_same_records_queries_and_stats_on_both_backends(postgres_server, tmp_path):
    pg = Audit(url=postgres_server.new_database())
    lite = Audit(path=str(tmp_path / "audit.db"))
    rows = [stored_row(r, "full") for r in sample()]
    for writer in (PgWriter(pg.url), SqliteWriter(lite.path)):
        writer.insert(rows[:2])
        writer.insert(rows[2:])
        writer.close()
    for filters in ({}, {"policy": "pi-v2"}, {"tenant": "beta"}, {"since": str(T0 + 25)}):
        assert query(pg, limit=None, **filters) == query(lite.path, limit=None, **filters)
        assert stats(pg, **filters) == stats(lite.path, **filters)
    assert query(pg, limit=2, offset=1) == query(lite.path, limit=2, offset=1)
    assert stats(pg)["agreement"] and stats(pg)["requests"] == 5
    page = asyncio.run(audit_page(pg, {"decision": "block"}))
    assert [r["request_id"] for r in page["data"]] == ["req-20"]


def test_retention_days_deletes_old_records_on_both_backends(postgres_server, tmp_path):
    now = time.time()
    old, new = record(1, time=now - 10 * 86400), record(2, time=now - 3600)
    for cfg in (
        Audit(url=postgres_server.new_database(), retention_days=7, flush_interval_s=0.01),
        Audit(path=str(tmp_path / "a.db"), retention_days=7, flush_interval_s=0.01),
    ):
        log = AuditLog(cfg)
        asyncio.run(_submit_and_close(log, [old, new], wait=lambda a=log: a.stats()["purged"] == 1))
        assert [r["request_id"] for r in query(cfg if cfg.url else cfg.path)] == ["req-2"]


async def _submit_and_close(log: AuditLog, records: list[dict], wait=None) -> None:
    await log.start()
    for r in records:
        log.submit(r)
    await wait_for(lambda: log.stats()["written"] == len(records))
    if wait is not None:
        await wait_for(wait)
    await log.close()


def test_postgres_stopped_mid_load_then_restarted_loses_nothing(postgres_server, tmp_path):
    cfg = Audit(
        url=postgres_server.new_database(),
        path=str(tmp_path / "audit.db"),  # the spill file lives beside it
        content="hash",
        flush_interval_s=0.02,
    )
    log = AuditLog(cfg, reopen_after_s=0.2)
    total = 600

    async def load() -> None:
        await log.start()
        for i in range(total):
            log.submit(record(i))
            if i == 200:  # the database goes away mid-load...
                await asyncio.to_thread(postgres_server.stop)
            if i == 400:  # ...and comes back
                await asyncio.to_thread(postgres_server.start)
            await asyncio.sleep(0.002)
        await wait_for(lambda: log.stats()["replayed"] > 0, timeout=20)
        await log.close()

    try:
        asyncio.run(load())
    finally:
        if not Path(postgres_server.data / "postmaster.pid").exists():
            postgres_server.start()
    s = log.stats()
    assert s["spilled"] > 0 and s["dropped"] == 0
    stored = [r["request_id"] for r in query(cfg, limit=None)]
    # nothing lost (at least once: a commit whose answer the outage cut off is replayed too)
    assert set(stored) == {f"req-{i}" for i in range(total)}
    assert not Path(log.spill_path).exists() or not Path(log.spill_path).read_bytes()


def test_cli_and_admin_api_read_the_postgres_store(
    postgres_server, upstream, classifier, tmp_path, capsys
):
    url = postgres_server.new_database()
    path = write_config_file(tmp_path, upstream, classifier, **{"audit.url": url})
    proc, base = start_gateway_process(path)
    try:
        sent = [
            httpx.post(
                base + "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}"},
                json={"model": "guarded-x", "messages": [{"role": "user", "content": text}]},
            )
            for text in ("hello", "get an aimbot")
        ]
        assert [r.status_code for r in sent] == [200, 400]
        ids = {r.headers["x-request-id"] for r in sent}

        def admin() -> list[dict]:
            page = httpx.get(
                base + "/admin/audit", headers={"authorization": f"Bearer {ADMIN_KEY}"}
            ).json()
            return page["data"]

        wait_for_sync(lambda: {r["request_id"] for r in admin()} == ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert audit_cli_main(["audit", "query", "--config", str(path), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert audit_cli_main(["audit", "stats", "--config", str(path), "--json"]) == 0
    assert '"block":1' in capsys.readouterr().out
    assert audit_cli_main(["audit", "export", "--config", str(path)]) == 0
    exported = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["request_id"] for r in exported} == ids
    assert audit_cli_main(["audit", "tail", "-n", "1", "--config", str(path), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["decision"] == "block"
    assert not (tmp_path / "audit.db").exists()  # nothing went to SQLite


def test_sigterm_with_200_in_flight_loses_none_on_postgres(
    postgres_server, upstream, classifier, tmp_path
):
    url = postgres_server.new_database()
    ids = sigterm_with_in_flight(upstream, classifier, tmp_path, 200, **{"audit.url": url})
    assert ids <= {r["request_id"] for r in query(Audit(url=url), limit=None)}


def test_records_identical_across_backends_for_the_same_traffic(make_gateway, postgres_server):
    url = postgres_server.new_database()
    lite = make_gateway(guarded=GUARDED)
    pg = make_gateway(guarded=GUARDED, raw={"audit": {"url": url}})
    texts = ["hello there", "get an aimbot now", "my email is a@b.example"]
    for gw in (lite, pg):
        for text in texts:
            with contextlib.suppress(openai.BadRequestError):  # the blocked one
                chat(gw, "guarded-x", text)
    records = {}
    for name, store in (("lite", lite.config.audit.path), ("pg", pg.config.audit)):
        found: list[dict] = []
        deadline = time.monotonic() + 10
        while len(found) < len(texts) and time.monotonic() < deadline:
            found = query(store, limit=None, newest_first=False)
            time.sleep(0.05)
        records[name] = [_stable(r) for r in found]
    assert len(records["pg"]) == len(texts) and records["pg"] == records["lite"]


def _stable(record: dict) -> dict:
    kept = {k: v for k, v in record.items() if k not in VOLATILE}
    kept["verdicts"] = [
        {k: v for k, v in verdict.items() if k not in ("latency_ms", "cache_hit")}
        for verdict in record["verdicts"]
    ]
    return kept


def wait_for_sync(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def audit_cli_main(argv: list[str]) -> int:
    from proxy.cli import main

    return main(argv)


def test_a_gateway_keeps_every_record_through_a_postgres_restart(
    postgres_server, upstream, classifier, tmp_path
):
    url = postgres_server.new_database()
    path = write_config_file(tmp_path, upstream, classifier, **{"audit.url": url})
    proc, base = start_gateway_process(path)
    ids: list[str] = []
    try:
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {KEY}"}) as client:
            for i in range(120):
                if i == 40:
                    postgres_server.stop()
                if i == 80:
                    postgres_server.start()
                reply = client.post(
                    "/v1/chat/completions",
                    json={"model": "guarded-1", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert reply.status_code == 200  # the audit store is never the request's problem
                ids.append(reply.headers["x-request-id"])
                time.sleep(0.02)
        stored: set[str] = set()
        deadline = time.monotonic() + 30
        while not set(ids) <= stored:
            assert time.monotonic() < deadline, f"{len(set(ids) - stored)} records missing"
            time.sleep(0.2)
            stored = {r["request_id"] for r in query(Audit(url=url), limit=None)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if not (postgres_server.data / "postmaster.pid").exists():
            postgres_server.start()
