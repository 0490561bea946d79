"""The audit store's schema, written once for SQLite (proxy.audit_store) and PostgreSQL
(proxy.audit_pg, which runs the steps as versioned migrations).

Version 1 is `requests` (one row per record: its JSON text and the indexed columns) and
`verdicts` (one row per verdict: what policy filters and stats read); version 2 adds
`reviews` (proxy.reviews) and the console's shadow index; version 3 `console_logouts`
(console sessions signed out before they expire). A shipped step is never edited: a new
column or index is a new step, for both engines.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUEST_TYPES = {
    "request_id": "TEXT",
    "time": "REAL",
    "tenant": "TEXT",
    "route": "TEXT",
    "endpoint": "TEXT",
    "model": "TEXT",
    "decision": "TEXT",
    "status": "INTEGER",
}
VERDICT_TYPES = dict.fromkeys(("policy", "version", "side", "label", "category", "action"), "TEXT")
REQUEST_COLUMNS = ("id", *REQUEST_TYPES, "record")  # a `requests` row as inserted
VERDICT_COLUMNS = ("request", *VERDICT_TYPES, "shadow")  # a `verdicts` row as inserted


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines' DDL."""

    key: str  # a row id (SQLite's INTEGER PRIMARY KEY is its 64-bit rowid)
    real: str
    cascade: str  # verdicts go with their request


SQLITE = Dialect("INTEGER", "REAL", "")
POSTGRES = Dialect("BIGINT", "DOUBLE PRECISION", " ON DELETE CASCADE")


def tables_sql(d: Dialect) -> str:
    """Version 1: `requests`, `verdicts` and their indexes."""

    def columns(types: dict[str, str]) -> str:
        return ", ".join(f"{c} {d.real if t == 'REAL' else t}" for c, t in types.items())

    return f"""
CREATE TABLE IF NOT EXISTS requests (
    id {d.key} PRIMARY KEY, {columns(REQUEST_TYPES)}, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_tenant ON requests(tenant, time);
CREATE INDEX IF NOT EXISTS requests_route ON requests(route, time);
CREATE INDEX IF NOT EXISTS requests_decision ON requests(decision, time);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id);
CREATE TABLE IF NOT EXISTS verdicts (
    request {d.key} NOT NULL REFERENCES requests(id){d.cascade}, {columns(VERDICT_TYPES)},
    shadow INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS verdicts_policy ON verdicts(policy, request);
CREATE INDEX IF NOT EXISTS verdicts_request ON verdicts(request);
"""


# Version 2: a reviewer's mark on one verdict of one request (the latest wins), plain
# enough SQL for both engines.
REVIEWS = """
CREATE TABLE IF NOT EXISTS reviews (
    request BIGINT NOT NULL, verdict INTEGER NOT NULL, policy TEXT, side TEXT,
    shadow INTEGER NOT NULL DEFAULT 0, model_label TEXT, mark TEXT NOT NULL, note TEXT,
    reviewer TEXT, time DOUBLE PRECISION NOT NULL, PRIMARY KEY (request, verdict)
);
CREATE INDEX IF NOT EXISTS reviews_time ON reviews(time);
CREATE INDEX IF NOT EXISTS reviews_policy ON reviews(policy, time);
CREATE INDEX IF NOT EXISTS verdicts_shadow ON verdicts(shadow, request);
"""


# Version 3: the ids of console sessions signed out, kept until they would have expired
# (every worker and pod reads them: a replayed cookie is refused everywhere).
CONSOLE_LOGOUTS = """
CREATE TABLE IF NOT EXISTS console_logouts (
    session TEXT PRIMARY KEY, expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS console_logouts_expires ON console_logouts(expires);
"""


def schema_steps(d: Dialect) -> tuple[str, ...]:
    """The schema's versions in order: version n is reached by running step n - 1."""
    return (tables_sql(d), REVIEWS, CONSOLE_LOGOUTS)


SCHEMA_VERSION = len(schema_steps(SQLITE))
