from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from proxy import audit_store
from proxy.audit import AuditLog, SpillFile, apply_retention, spill_path, stored_row
from proxy.audit_store import (
    MAX_PAGE,
    RECORD,
    VERDICTS,
    AuditQueryError,
    audit_page,
    audit_row,
    insert_rows,
    open_store,
    parse_time,
    query,
    stats,
)
from proxy.config import Audit

T0 = 1_700_000_000.0
SECRET_IN = "my card is 4111-1111-1111-1111 SECRET-INPUT-7f3a"
SECRET_OUT = "sure, here it is SECRET-OUTPUT-9c2e"


def verdict(policy: str, label: str, *, side: str = "input", shadow: bool = False) -> dict:
    return {
        "policy": policy,
        "version": "v" + policy[:3],
        "label": label,
        "category": "C1" if label == "violation" else None,
        "rationale": f"{policy} says {label}",
        "reasoning": "the analysis channel text",
        "source": "error" if label == "error" else "model",
        "cache_hit": False,
        "latency_ms": 12.5,
        "error": "timeout" if label == "error" else None,
        "shadow": shadow,
        "side": side,
        "action": "block",
    }


def record(n: int = 0, **fields) -> dict:
    base = {
        "request_id": f"req-{n}",
        "time": T0 + n,
        "tenant": "acme",
        "route": "default",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "stream": False,
        "decision": "allow",
        "status": 200,
        "verdicts": [],
        "timings": {"classifier_ms": 10.0, "upstream_ms": 20.0, "total_ms": 31.0, "ttft_ms": None},
        "error": None,
        "content": {
            "input": SECRET_IN,
            "input_redacted": "my card is [REDACTED:CREDIT_CARD] SECRET-INPUT-7f3a",
            "output": SECRET_OUT,
            "output_redacted": None,
        },
    }
    return base | fields


def audit_cfg(tmp_path: Path, **kw) -> Audit:
    return Audit(**({"path": str(tmp_path / "data" / "audit.db"), "flush_interval_s": 0.01} | kw))


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def db_count(path: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def raw_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


# -- time parsing --------------------------------------------------------------------------


def test_parse_time_forms():
    now = T0
    assert parse_time(1700000000) == 1700000000.0
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("15m", now=now) == now - 900
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time("1.5H", now=now) == now - 5400
    assert parse_time("now", now=now) == now
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14T23:13:20+01:00") == T0
    assert parse_time("2023-11-14T22:13:20") == T0  # naive means UTC
    assert parse_time("2023-11-14") == T0 - (22 * 3600 + 13 * 60 + 20)


@pytest.mark.parametrize("bad", ["", "yesterday", "15x", "nan", "2023-13-01", "-", "inf"])
def test_parse_time_rejects(bad):
    with pytest.raises(AuditQueryError, match="not a time"):
        parse_time(bad)


# -- retention -----------------------------------------------------------------------------


def test_apply_retention_modes():
    rec = record()
    digest_in = "sha256:" + hashlib.sha256(SECRET_IN.encode()).hexdigest()
    assert apply_retention(rec, "full")["content"] == {
        "retention": "full",
        "input": SECRET_IN,
        "output": SECRET_OUT,
    }
    redacted = apply_retention(rec, "redacted")["content"]
    assert redacted["input"] == "my card is [REDACTED:CREDIT_CARD] SECRET-INPUT-7f3a"
    assert redacted["output"] == SECRET_OUT  # nothing redacted in the output
    hashed = apply_retention(rec, "hash")["content"]
    assert hashed["input"] == digest_in
    assert hashed["output"].startswith("sha256:") and len(hashed["output"]) == 71
    assert apply_retention(rec, "none")["content"] == {
        "retention": "none",
        "input": None,
        "output": None,
    }
    assert rec["content"]["input"] == SECRET_IN  # the caller's record is untouched
    no_content = apply_retention(record(content=None), "hash")["content"]
    assert no_content["input"] is None and no_content["output"] is None
    # A blocked answer released nothing: its redacted text is "", not the original.
    withheld = record(content={"input": SECRET_IN, "output": SECRET_OUT, "output_redacted": ""})
    assert apply_retention(withheld, "redacted")["content"]["output"] == ""


@pytest.mark.parametrize("mode", ["full", "redacted", "hash", "none"])
async def test_retention_in_the_database_file(tmp_path, mode):
    log = AuditLog(audit_cfg(tmp_path, content=mode))
    await log.start()
    rec = record(verdicts=[verdict("pii", "violation")])
    log.submit(rec)
    await log.close()

    [stored] = query(log.path)
    assert stored == apply_retention(rec, mode)  # every field of the record round-trips
    # hash and none keep labels only: reasoning and rationale may quote the content
    kept_reasoning = mode in ("full", "redacted")
    assert (stored["verdicts"][0]["reasoning"] == "the analysis channel text") is kept_reasoning
    assert (b"the analysis channel text" in raw_bytes(tmp_path)) is kept_reasoning
    data = raw_bytes(tmp_path)
    assert (b"SECRET-INPUT-7f3a" in data) is (mode in ("full", "redacted"))
    assert (b"4111-1111-1111-1111" in data) is (mode == "full")
    assert (b"SECRET-OUTPUT-9c2e" in data) is (mode in ("full", "redacted"))
    assert (hashlib.sha256(SECRET_IN.encode()).hexdigest().encode() in data) is (mode == "hash")
    if mode == "none":
        assert b"sha256:" not in data


def test_unknown_retention_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"content"):
        AuditLog(audit_cfg(tmp_path, content="some"))


# -- writer --------------------------------------------------------------------------------


async def test_batches_and_close_drains_everything(tmp_path):
    log = AuditLog(audit_cfg(tmp_path, batch_size=256, flush_interval_s=0.05))
    await log.start()
    assert Path(log.path).is_file()
    with closing(sqlite3.connect(log.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    started = time.perf_counter()
    for i in range(5000):
        log.submit(record(i, verdicts=[verdict("pii", "safe")]))
    elapsed = time.perf_counter() - started
    await log.close()

    assert db_count(log.path) == 5000
    s = log.stats()
    assert s["written"] == 5000 and s["spilled"] == 0 and s["errors"] == 0
    assert 20 <= s["batches"] < 5000  # written in batches, not row by row
    assert elapsed < 1.0  # submit stays cheap (~microseconds each)
    assert not Path(log.spill_path).exists()


async def test_unopenable_store_spills_and_reports_degraded(tmp_path):
    (tmp_path / "blocker").write_text("a regular file, not a directory")
    spill = tmp_path / "spill" / "audit.jsonl"
    log = AuditLog(
        Audit(path=str(tmp_path / "blocker" / "audit.db"), content="hash", spill_path=str(spill))
    )
    await log.start()
    ok, why = log.health()
    assert not ok and "cannot open audit store" in why
    for i in range(3):
        log.submit(record(i))
    await log.close()

    lines = [orjson.loads(line) for line in spill.read_bytes().splitlines()]
    assert [r["request_id"] for r in lines] == ["req-0", "req-1", "req-2"]
    assert all(r["content"]["input"].startswith("sha256:") for r in lines)
    assert b"SECRET-INPUT" not in spill.read_bytes()  # retention applies to the spill too
    s = log.stats()
    assert s["spilled"] == 3 and s["written"] == 0 and s["dropped"] == 0 and s["errors"] >= 1


async def test_unwritable_spill_counts_dropped_without_raising(tmp_path):
    (tmp_path / "blocker").write_text("x")
    log = AuditLog(Audit(path=str(tmp_path / "blocker" / "audit.db")))  # spill beside it: fails
    await log.start()
    log.submit(record(1))
    await log.close()
    assert log.stats()["dropped"] == 1
    ok, why = log.health()
    assert not ok and "spill" in why


async def test_store_failure_midway_spills_then_recovers(tmp_path):
    log = AuditLog(audit_cfg(tmp_path), reopen_after_s=0.01)
    await log.start()
    log.submit(record(1))
    await wait_for(lambda: log.stats()["written"] == 1)
    assert log.health()[0]

    with closing(sqlite3.connect(log.path)) as other:  # the writer's next insert fails
        other.executescript("DROP TABLE verdicts; DROP TABLE requests;")
    log.submit(record(2))
    await wait_for(lambda: log.stats()["spilled"] == 1)
    ok, why = log.health()
    assert not ok and "write failed" in why and "1 records spilled" in why

    log.submit(record(3))  # the writer reopens the store (recreating the schema)
    await wait_for(lambda: log.stats()["written"] == 2)
    await wait_for(lambda: log.stats()["replayed"] == 1)  # and replays what it spilled
    ok, why = log.health()
    assert ok and "1 records spilled" in why
    await log.close()
    assert [r["request_id"] for r in query(log.path)] == ["req-3", "req-2"]


async def test_spill_lines_from_other_processes_and_interrupted_replays_are_stored(tmp_path):
    cfg = audit_cfg(tmp_path)
    Path(cfg.path).parent.mkdir(parents=True)
    other = SpillFile(spill_path(cfg))  # e.g. a worker whose recorder had died
    other.write([stored_row(record(1), "full")])
    Path(spill_path(cfg) + ".replay-1-1").write_text(  # a replay cut short by a crash
        stored_row(record(2), "full")[RECORD] + "\n" + '{"torn'
    )
    log = AuditLog(cfg)
    await log.start()
    await wait_for(lambda: log.stats()["replayed"] == 2)
    await log.close()
    assert sorted(r["request_id"] for r in query(cfg.path)) == ["req-1", "req-2"]
    assert not list(Path(cfg.path).parent.glob("*.replay-*"))


async def test_full_queue_spills_instead_of_dropping(tmp_path):
    log = AuditLog(audit_cfg(tmp_path, queue_size=5))
    for i in range(12):  # before start nothing drains the queue
        log.submit(record(i))
    ok, why = log.health()
    assert not ok and "queue full" in why
    assert log.stats()["queued"] == 5 and log.stats()["spilled"] == 7

    await log.start()
    await wait_for(lambda: log.stats()["written"] == 5)
    # once the store takes writes, the spilled records are replayed into it, once each
    await wait_for(lambda: log.stats()["replayed"] == 7)
    ok, why = log.health()
    assert ok and "7 records spilled" in why
    await log.close()
    stored = [r["request_id"] for r in query(log.path, limit=None)]
    assert sorted(stored) == sorted(f"req-{i}" for i in range(12))
    assert not Path(log.spill_path).exists() or not Path(log.spill_path).read_bytes()


@pytest.mark.parametrize("count", [1, 89, 90, 91, 203])
def test_a_batch_of_any_size_is_stored_whole_and_in_order(tmp_path, count):
    path = str(tmp_path / "audit.db")
    batch = [record(i, verdicts=[verdict("pii", "safe")] * (i % 3)) for i in range(count)]
    with closing(open_store(path)) as conn:
        insert_rows(conn, [stored_row(r, "full") for r in batch])
    assert ids(query(path, newest_first=False, limit=MAX_PAGE)) == [r["request_id"] for r in batch]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == sum(
            i % 3 for i in range(count)
        )


def test_batches_of_every_size_share_a_few_statement_shapes(tmp_path):
    audit_store._insert_sql.cache_clear()
    with closing(open_store(str(tmp_path / "audit.db"))) as conn:
        for size in range(1, 200):  # what 50 ms of traffic may bring
            safe = [verdict("pii", "safe")]
            batch = [record(size * 1000 + i, verdicts=safe) for i in range(size)]
            insert_rows(conn, [stored_row(r, "full") for r in batch])
    shapes = audit_store._insert_sql.cache_info().currsize  # per table, not per batch size
    assert shapes <= 16


def test_rows_keep_odd_values_as_text():
    odd = record(1, verdicts=[{**verdict("pii", "violation"), "extra": {7: "int key"}}])
    odd["model"] = {"not": "a string"}  # a client's odd `model` still goes into its column
    row = stored_row(odd, "full")
    assert row[:6] == ("req-1", T0 + 1, "acme", "default", odd["endpoint"], str(odd["model"]))
    assert row[VERDICTS][0][:4] == ("pii", "vpii", "input", "violation")
    assert orjson.loads(row[RECORD])["verdicts"][0]["extra"] == {"7": "int key"}


async def test_a_batch_of_rows_beyond_the_queue_spills_its_overflow(tmp_path):
    log = AuditLog(audit_cfg(tmp_path, queue_size=5))
    log.submit_rows([stored_row(record(i), "full") for i in range(3)])
    log.submit_rows([stored_row(record(i), "full") for i in range(3, 8)])  # room for 2
    assert log.stats()["queued"] == 5 and log.stats()["spilled"] == 3
    spilled = [orjson.loads(x) for x in Path(log.spill_path).read_bytes().splitlines()]
    assert [r["request_id"] for r in spilled] == ["req-5", "req-6", "req-7"]
    await log.start()
    await log.close()
    assert ids(query(log.path, newest_first=False)) == [f"req-{i}" for i in range(5)]


async def test_submit_after_close_spills_and_bad_input_never_raises(tmp_path):
    log = AuditLog(audit_cfg(tmp_path))
    await log.start()
    log.submit(None)  # type: ignore[arg-type]
    log.submit("not a record")  # type: ignore[arg-type]
    assert log.stats()["errors"] == 2
    assert log.stats()["rejected"] == 2  # settled: the gateway's recorder handle counts on it
    await log.close()
    log.submit(record(9))
    assert log.stats()["spilled"] == 1
    assert db_count(log.path) == 0


async def test_disabled_is_a_no_op(tmp_path):
    log = AuditLog(audit_cfg(tmp_path, enabled=False))
    await log.start()
    log.submit(record(1))
    await log.close()
    assert log.health() == (True, "audit disabled")
    assert not any(tmp_path.iterdir())


# -- queries and stats ---------------------------------------------------------------------


def sample() -> list[dict]:
    """Five requests; `pi-v2` runs in shadow beside the enforced input policies."""
    return [
        record(10, verdicts=[verdict("pii", "safe"), verdict("pi-v2", "safe", shadow=True)]),
        record(
            20,
            decision="block",
            status=400,
            verdicts=[
                verdict("pii", "violation"),
                verdict("prompt-injection", "safe"),
                verdict("pi-v2", "violation", shadow=True),
            ],
        ),
        record(
            30,
            tenant="beta",
            route="strict",
            decision="annotate",
            verdicts=[
                verdict("pii", "safe"),
                verdict("pi-v2", "violation", shadow=True),
                verdict("pii", "safe", side="output"),  # two stream windows: one flagged
                verdict("pii", "violation", side="output"),
            ],
        ),
        record(
            40,
            tenant="beta",
            decision="error",
            status=503,
            verdicts=[verdict("pii", "error"), verdict("pi-v2", "safe", shadow=True)],
        ),
        record(50),
    ]


@pytest.fixture
def store(tmp_path) -> str:
    path = str(tmp_path / "audit.db")
    with closing(open_store(path)) as conn:
        insert_rows(conn, [audit_row(r) for r in sample()])
    return path


def ids(records: list[dict]) -> list[str]:
    return [r["request_id"] for r in records]


def test_query_filters_and_paging(store):
    assert ids(query(store)) == ["req-50", "req-40", "req-30", "req-20", "req-10"]
    assert ids(query(store, newest_first=False, limit=2)) == ["req-10", "req-20"]
    assert ids(query(store, limit=2, offset=2)) == ["req-30", "req-20"]
    assert ids(query(store, tenant="beta")) == ["req-40", "req-30"]
    assert ids(query(store, route="strict")) == ["req-30"]
    assert ids(query(store, decision="block,error")) == ["req-40", "req-20"]
    assert ids(query(store, policy="prompt-injection")) == ["req-20"]
    assert ids(query(store, policy="pi-v2", tenant="acme")) == ["req-20", "req-10"]
    assert ids(query(store, since=T0 + 30)) == ["req-50", "req-40", "req-30"]
    assert ids(query(store, until="2023-11-14T22:14:10Z")) == [
        "req-40",
        "req-30",
        "req-20",
        "req-10",
    ]
    assert ids(query(store, request_id="req-30, req-10")) == ["req-30", "req-10"]
    assert query(store, tenant="nobody") == []


def test_stats_hand_checked(store):
    s = stats(store)
    assert s["requests"] == 5 and (s["first"], s["last"]) == (T0 + 10, T0 + 50)
    assert s["decisions"] == {"allow": 2, "annotate": 1, "block": 1, "error": 1}
    assert s["tenants"] == {
        "acme": {"requests": 3, "decisions": {"allow": 2, "block": 1}},
        "beta": {"requests": 2, "decisions": {"annotate": 1, "error": 1}},
    }
    assert s["policies"]["pii"] == {
        "requests": 4,
        "decisions": {"allow": 1, "block": 1, "annotate": 1, "error": 1},
        # checks: req-10 in safe, req-20 in violation, req-30 in safe + out violation, req-40 error
        "labels": {"safe": 2, "error": 1, "violation": 2},
    }
    assert s["policies"]["prompt-injection"]["labels"] == {"safe": 1, "error": 0, "violation": 0}
    assert s["shadow_policies"] == {
        "pi-v2": {
            "requests": 4,
            "decisions": {"allow": 1, "block": 1, "annotate": 1, "error": 1},
            "labels": {"safe": 2, "error": 0, "violation": 2},
        }
    }
    pii, pinj = s["agreement"]
    # req-10 safe/safe, req-20 flag/flag, req-30 shadow flags alone, req-40 enforced errored
    assert pii == {
        "shadow_policy": "pi-v2",
        "enforced_policy": "pii",
        "side": "input",
        "pairs": 4,
        "compared": 3,
        "agree": 2,
        "both_violation": 1,
        "both_safe": 1,
        "shadow_only": 1,
        "enforced_only": 0,
        "errors": 1,
        "agreement": 0.6667,
    }
    assert (pinj["enforced_policy"], pinj["pairs"], pinj["shadow_only"], pinj["agreement"]) == (
        "prompt-injection",
        1,
        1,
        0.0,
    )


def test_stats_filters_and_limit(store):
    acme = stats(store, tenant="acme")
    assert acme["requests"] == 3
    assert [(a["enforced_policy"], a["agreement"]) for a in acme["agreement"]] == [
        ("pii", 1.0),
        ("prompt-injection", 0.0),
    ]
    recent = stats(store, limit=2)  # req-50 and req-40
    assert recent["decisions"] == {"allow": 1, "error": 1}
    assert recent["agreement"][0]["errors"] == 1 and recent["agreement"][0]["agreement"] is None
    assert stats(store, since=T0 + 100)["requests"] == 0


async def test_audit_page(store, tmp_path):
    page = await audit_page(store, {"limit": "2"})
    assert page["object"] == "list" and ids(page["data"]) == ["req-50", "req-40"]
    assert page["has_more"] is True and page["next_offset"] == 2
    last = await audit_page(store, {"limit": "2", "offset": "4"})
    assert ids(last["data"]) == ["req-10"] and last["has_more"] is False
    assert last["next_offset"] is None
    filtered = await audit_page(store, {"policy": "pii", "decision": "block", "since": "0"})
    assert ids(filtered["data"]) == ["req-20"]
    assert filtered["data"][0]["verdicts"][0]["rationale"] == "pii says violation"
    oldest = await audit_page(store, {"order": "asc", "limit": "1"})
    assert ids(oldest["data"]) == ["req-10"]
    empty = await audit_page(str(tmp_path / "none.db"), {})
    assert empty == {"object": "list", "data": [], "has_more": False, "next_offset": None}
    for bad in (
        {"limit": "abc"},
        {"limit": "0"},
        {"limit": "5000"},
        {"offset": "-1"},
        {"since": "yesterday"},
        {"order": "up"},
    ):
        with pytest.raises(AuditQueryError):
            await audit_page(store, bad)


def test_the_policy_filter_probes_each_request_rather_than_listing_all_its_verdicts(tmp_path):
    """`audit query --policy`, /admin/audit and the console share one filter: a correlated
    probe of the newest requests' verdicts (a page of a policy most requests have takes a
    millisecond), not the list of every request the policy ever saw, sorted (seconds)."""
    with closing(audit_store.open_store(tmp_path / "a.db")) as conn:
        where, params = audit_store.Filters.build(policy="pi, pii").where()
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT r.id FROM requests r WHERE {where}"
            " ORDER BY r.time DESC, r.id DESC LIMIT 100",
            params,
        ).fetchall()
    steps = " / ".join(row[-1] for row in plan)
    assert "CORRELATED" in steps and "LIST SUBQUERY" not in steps, steps
    assert params == ["pi", "pii"]
