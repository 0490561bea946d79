"""The audit store: SQLite's store, batch insert, filtered reads and summaries.

One row per request in `requests` (the full record as JSON text plus indexed columns) and
one row per verdict in `verdicts` (the columns policy filters and stats need). The gateway's
writer (proxy.audit) owns the only read-write connection; readers (CLI, admin API) open the
file read-only, which WAL lets them do while the gateway writes.

SQLite lives here; PostgreSQL (`audit.url`) in proxy.audit_pg, with the same tables (both
made from proxy.audit_schema). The seam is small: `open_writer` (insert, purge, close) and
`open_reader` (an `execute` in sqlite3's shape), so the filters, queries and stats below
are written once, in SQL both engines run (`1=1`, no `IS` between columns, a large number
for "no limit").
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.audit_schema import (
    REQUEST_COLUMNS,
    REQUEST_TYPES,
    SCHEMA_VERSION,
    SQLITE,
    VERDICT_COLUMNS,
    VERDICT_TYPES,
    schema_steps,
)
from proxy.config import Audit

MAX_PAGE = 1000
NO_LIMIT = 2**62  # "all rows" in both SQLite and PostgreSQL

# SQLite runs every step each time it opens the store (each one is idempotent).
_SCHEMA = "".join(schema_steps(SQLITE)) + f"PRAGMA user_version = {SCHEMA_VERSION};"


class StoreMissing(FileNotFoundError):
    """The audit database file does not exist (nothing recorded yet, or a wrong path)."""


class AuditQueryError(ValueError):
    """A filter or paging parameter is malformed (the admin API answers 400)."""


# -- writing (used by the writer thread in proxy.audit) -------------------------------------


def open_store(path: str | Path) -> sqlite3.Connection:
    """Open (creating dirs, file and schema) the store read-write in WAL mode."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def encode(record: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, default=str)
    except TypeError:  # a key that is not text, say: OPT_NON_STR_KEYS takes it, at twice the cost
        return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)


_REQUEST_COLS = tuple(REQUEST_TYPES)
_VERDICT_COLS = tuple(VERDICT_TYPES)
_request_columns = operator.itemgetter(*_REQUEST_COLS)

# A stored record as the writer inserts it (`audit_row` makes one): its `requests` columns,
# its JSON text (RECORD) and a tuple of its `verdicts` rows (VERDICTS). A plain tuple, so
# the gateway builds rows and its recorder process only inserts them.
Row = tuple[Any, ...]
RECORD = len(_REQUEST_COLS)
VERDICTS = RECORD + 1


def audit_row(stored: Mapping[str, Any]) -> Row:
    """The row of a record as stored (retention applied). Raises TypeError when the
    record cannot be encoded."""
    try:
        columns = _request_columns(stored)
    except KeyError:  # a partial record: its missing columns are NULL
        columns = tuple(map(stored.get, _REQUEST_COLS))
    if not _PLAIN.issuperset(map(type, columns)):
        columns = tuple(map(_column, columns))
    verdicts = tuple(
        (*map(_column, map(v.get, _VERDICT_COLS)), bool(v.get("shadow")))
        for v in stored.get("verdicts") or ()
        if isinstance(v, Mapping)
    )
    return (*columns, encode(stored).decode(), verdicts)


def insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Insert a batch in one transaction (all or nothing) with a few multi-row statements
    rather than two per record: each statement costs a GIL hand-off between the writer
    thread and the recorder's reader, and the per-row Python around it."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")  # ids below stay ours until the commit
        (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()
        first = last + 1
        requests = [(rid, *row[:VERDICTS]) for rid, row in enumerate(rows, first)]
        verdicts = [(rid, *v) for rid, row in enumerate(rows, first) for v in row[VERDICTS]]
        _insert_rows(conn, "requests", REQUEST_COLUMNS, requests)
        _insert_rows(conn, "verdicts", VERDICT_COLUMNS, verdicts)


def _insert_rows(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: list
) -> None:
    most = 900 // len(columns)  # well under SQLite's bound-parameter limit
    start = 0
    while left := len(rows) - start:
        # `most` rows, else a power of two: a few statement shapes, each compiled once
        # (the connection caches them) rather than one per batch size.
        count = most if left >= most else 1 << (left.bit_length() - 1)
        chunk = rows[start : start + count]
        conn.execute(_insert_sql(table, columns, count), [x for row in chunk for x in row])
        start += count


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], count: int) -> str:
    group = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([group] * count)


def _column(value: Any) -> str | float | None:
    """Text, numbers and None as they are; anything else (bools too) as text."""
    return value if type(value) in _PLAIN else str(value)


_PLAIN = frozenset({str, int, float, type(None)})


# -- filters ---------------------------------------------------------------------------------

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | float, *, now: float | None = None) -> float:
    """Unix seconds from unix seconds, ISO-8601 (naive = UTC) or a duration ago (`15m`, `7d`)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        current = datetime.now(UTC).timestamp() if now is None else now
        if text.lower() == "now":
            return current
        if match := _RELATIVE.fullmatch(text):
            return current - float(match.group(1)) * _UNITS[match.group(2).lower()]
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise AuditQueryError(
                    f"not a time: {value!r} (use unix seconds, ISO-8601, or 15m, 2h, 7d ago)"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        raise AuditQueryError(f"not a time: {value!r}")
    if not math.isfinite(seconds):
        raise AuditQueryError(f"not a time: {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Filters:
    """Request-level filters; each text filter may list alternatives separated by commas."""

    tenant: str | None = None
    route: str | None = None
    policy: str | None = None  # requests with any verdict (enforced or shadow) for the policy
    decision: str | None = None
    request_id: str | None = None
    since: float | None = None  # inclusive, on the request start time
    until: float | None = None  # exclusive

    @classmethod
    def build(cls, **raw: str | float | None) -> Filters:
        """From user input: empty values are unset; since/until go through parse_time."""
        values = {k: v for k, v in raw.items() if v not in (None, "")}
        for key in ("since", "until"):
            if key in values:
                values[key] = parse_time(values[key])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition on `requests r` and its parameters.

        The policy filter is a correlated EXISTS, not `r.id IN (SELECT ...)`: SQLite then
        walks requests newest first and probes each one's verdicts until the page is full
        (a millisecond on a million records), where IN builds and sorts the whole list
        (seconds for a policy most requests have). A policy few requests have is the slow
        case here instead: a scan of the requests in range (~0.1 s per 200k)."""
        clauses, params = ["1=1"], []
        for template, value in (
            ("r.tenant IN ({})", self.tenant),
            ("r.route IN ({})", self.route),
            ("r.decision IN ({})", self.decision),
            ("r.request_id IN ({})", self.request_id),
            (
                "EXISTS (SELECT 1 FROM verdicts p WHERE p.request = r.id AND p.policy IN ({}))",
                self.policy,
            ),
        ):
            if value:
                names = [n.strip() for n in value.split(",") if n.strip()] or [value]
                clauses.append(template.format(",".join("?" * len(names))))
                params += names
        if self.since is not None:
            clauses.append("r.time >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("r.time < ?")
            params.append(self.until)
        return " AND ".join(clauses), params


# -- reading ---------------------------------------------------------------------------------


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.is_file():
        raise StoreMissing(f"no audit store at {db_path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    conn.execute("PRAGMA query_only=1")
    return conn


Store = str | Path | Audit  # a SQLite file, or the config's store (either backend)


def open_reader(store: Store) -> Any:
    """A read-only connection to the store, with the sqlite3 calls `select` and
    `compute_stats` make. Raises StoreMissing for a SQLite file not created yet."""
    if isinstance(store, Audit):
        if store.url:
            from proxy.audit_pg import PgConnection

            return PgConnection(store.url)
        store = store.path
    return connect_readonly(store)


def select(
    conn: Any,
    filters: Filters,
    *,
    limit: int | None = 100,
    offset: int = 0,
    newest_first: bool = True,
    after_id: int | None = None,
) -> Iterator[tuple[int, dict]]:
    """(row id, record) pairs, lazily; `after_id` reads only rows stored after that row."""
    where, params = filters.where()
    if after_id is not None:
        where += " AND r.id > ?"
        params.append(after_id)
    order = "DESC" if newest_first else "ASC"
    cur = conn.execute(
        f"SELECT r.id, r.record FROM requests r WHERE {where} "
        f"ORDER BY r.time {order}, r.id {order} LIMIT ? OFFSET ?",
        [*params, NO_LIMIT if limit is None else limit, offset],
    )
    for row_id, text in cur:
        yield row_id, orjson.loads(text)


def query(
    db_path: Store,
    *,
    limit: int | None = 100,
    offset: int = 0,
    newest_first: bool = True,
    **filters: str | float | None,
) -> list[dict]:
    """Full audit records matching the filters (raises StoreMissing, AuditQueryError).

    Filters: tenant, route, policy, decision, request_id (each may be a comma-separated
    list), since, until (unix seconds, ISO-8601, or a time ago like `15m`); see `Filters`.
    """
    with closing(open_reader(db_path)) as conn:
        rows = select(
            conn, Filters.build(**filters), limit=limit, offset=offset, newest_first=newest_first
        )
        return [record for _, record in rows]


# Per (request, policy, side, shadow) the verdicts of all windows fold into one label:
# violation if any window was flagged, else error if any failed, else safe.
_FOLD = (
    "WITH sel AS (SELECT r.id, r.decision FROM requests r WHERE {where}"
    " ORDER BY r.time DESC, r.id DESC LIMIT ?),"
    " checks AS (SELECT v.request, COALESCE(v.policy, '?') AS policy, v.side, v.shadow,"
    " MAX(CASE v.label WHEN 'violation' THEN 2 WHEN 'error' THEN 1 ELSE 0 END) AS lab"
    " FROM verdicts v JOIN sel ON sel.id = v.request GROUP BY 1, 2, 3, 4) "
)
_LABELS = ("safe", "error", "violation")
# shadow_only: the shadow flagged, the enforced said safe; errors: either failed (not compared)
_PAIR_COUNTS = (
    "pairs",
    "compared",
    "agree",
    "both_violation",
    "both_safe",
    "shadow_only",
    "enforced_only",
    "errors",
)


def stats(
    db_path: Store,
    *,
    limit: int | None = None,
    **filters: str | float | None,
) -> dict:
    """Decisions overall, per tenant and per policy, and shadow-vs-enforced agreement.

    `limit` restricts the summary to the most recent matching requests. Policy label counts
    are per check (request and side), with streamed windows folded into one label.
    """
    with closing(open_reader(db_path)) as conn:
        return compute_stats(conn, Filters.build(**filters), limit=limit)


def compute_stats(conn: Any, filters: Filters, *, limit: int | None = None) -> dict:
    where, params = filters.where()
    params = [*params, NO_LIMIT if limit is None else limit]
    sel = _FOLD.format(where=where)
    per_tenant = conn.execute(
        f"{sel} SELECT COALESCE(r.tenant, '?'), COALESCE(r.decision, '?'), COUNT(*),"
        " MIN(r.time), MAX(r.time) FROM requests r JOIN sel ON sel.id = r.id GROUP BY 1, 2",
        params,
    ).fetchall()
    per_policy = conn.execute(
        f"{sel} SELECT COALESCE(v.policy, '?'), v.shadow, COALESCE(sel.decision, '?'),"
        " COUNT(DISTINCT v.request) FROM verdicts v JOIN sel ON sel.id = v.request"
        " GROUP BY 1, 2, 3",
        params,
    ).fetchall()
    labels = conn.execute(
        f"{sel} SELECT policy, shadow, lab, COUNT(*) FROM checks GROUP BY 1, 2, 3", params
    ).fetchall()
    pairs = conn.execute(
        f"{sel} SELECT s.policy, e.policy, s.side, s.lab, e.lab, COUNT(*)"
        " FROM checks s JOIN checks e ON e.request = s.request"
        " AND COALESCE(e.side, '') = COALESCE(s.side, '')"
        " AND e.shadow = 0 WHERE s.shadow = 1 GROUP BY 1, 2, 3, 4, 5",
        params,
    ).fetchall()
    return summarise(per_tenant, per_policy, labels, pairs)


def summarise(per_tenant: list, per_policy: list, labels: list, pairs: list) -> dict:
    """Shape the grouped rows of `stats` into its report."""
    decisions: dict[str, int] = {}
    tenants: dict[str, dict] = {}
    times: list[float] = []
    for tenant, decision, count, first, last in per_tenant:
        decisions[decision] = decisions.get(decision, 0) + count
        entry = tenants.setdefault(tenant, {"requests": 0, "decisions": {}})
        entry["requests"] += count
        entry["decisions"][decision] = count
        times += [t for t in (first, last) if t is not None]

    groups: dict[str, dict[str, dict]] = {"policies": {}, "shadow_policies": {}}

    def policy_entry(name: str, shadow: int) -> dict:
        group = groups["shadow_policies" if shadow else "policies"]
        return group.setdefault(
            name, {"requests": 0, "decisions": {}, "labels": dict.fromkeys(_LABELS, 0)}
        )

    for name, shadow, decision, count in per_policy:
        entry = policy_entry(name, shadow)
        entry["requests"] += count
        entry["decisions"][decision] = count
    for name, shadow, lab, count in labels:
        policy_entry(name, shadow)["labels"][_LABELS[lab]] += count

    agreement: dict[tuple, dict] = {}
    for shadow_policy, enforced_policy, side, s_lab, e_lab, count in pairs:
        pair = agreement.setdefault(
            (shadow_policy, enforced_policy, side or ""),
            {"shadow_policy": shadow_policy, "enforced_policy": enforced_policy, "side": side}
            | dict.fromkeys(_PAIR_COUNTS, 0)
            | {"agreement": None},
        )
        pair["pairs"] += count
        if 1 in (s_lab, e_lab):
            pair["errors"] += count
            continue
        pair["compared"] += count
        key = {(2, 2): "both_violation", (0, 0): "both_safe", (2, 0): "shadow_only"}.get(
            (s_lab, e_lab), "enforced_only"
        )
        pair[key] += count
    for pair in agreement.values():
        pair["agree"] = pair["both_violation"] + pair["both_safe"]
        if pair["compared"]:
            pair["agreement"] = round(pair["agree"] / pair["compared"], 4)

    return {
        "requests": sum(decisions.values()),
        "first": min(times, default=None),
        "last": max(times, default=None),
        "decisions": dict(sorted(decisions.items())),
        "tenants": dict(sorted(tenants.items())),
        "policies": dict(sorted(groups["policies"].items())),
        "shadow_policies": dict(sorted(groups["shadow_policies"].items())),
        "agreement": [agreement[k] for k in sorted(agreement)],
    }


# -- admin API -------------------------------------------------------------------------------


async def audit_page(db_path: Store, params: Mapping[str, str]) -> dict:
    """One page for `GET /admin/audit`, newest first (`order=asc` for oldest first).

    Accepts tenant, route, policy, decision, request_id, since, until, limit (<= 1000),
    offset and order.
    Raises AuditQueryError for malformed values; a store not created yet is an empty page.
    """
    limit = _int_param(params, "limit", 100, 1, MAX_PAGE)
    offset = _int_param(params, "offset", 0, 0, None)
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise AuditQueryError("order: must be asc or desc")
    filters = Filters.build(**{k: params.get(k) for k in _FILTER_PARAMS})

    def run() -> list[dict]:
        try:
            with closing(open_reader(db_path)) as conn:
                rows = select(
                    conn, filters, limit=limit + 1, offset=offset, newest_first=order == "desc"
                )
                return [record for _, record in rows]
        except StoreMissing:
            return []

    records = await asyncio.to_thread(run)
    has_more = len(records) > limit
    return {
        "object": "list",
        "data": records[:limit],
        "has_more": has_more,
        "next_offset": offset + limit if has_more else None,
    }


_FILTER_PARAMS = ("tenant", "route", "policy", "decision", "request_id", "since", "until")


def _int_param(
    params: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AuditQueryError(f"{name}: must be an integer (got {raw!r})") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise AuditQueryError(f"{name}: must be {bound} (got {value})")
    return value
