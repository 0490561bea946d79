"""The PostgreSQL audit store (`audit.url: postgresql://...`): schema, migrations, COPY writes.

The same tables as the SQLite store (proxy.audit_schema writes them once for both), so
both share its query layer: `PgConnection` gives a psycopg connection the sqlite3 call shape
that layer and proxy.reviews use (`execute` with `?` placeholders). The gateway creates and
migrates the schema itself: `safeguard_schema` holds the version, and each step in
`_MIGRATIONS` runs once, under an advisory lock, so many workers and pods starting at once
migrate it exactly once.

Writes (the recorder's writer thread, never the request path) are one transaction a batch:
an advisory transaction lock keeps ids in commit order across every writer of the fleet
(`audit tail --follow` reads "rows after id N"), then two COPYs. psycopg 3 is imported
here only, so a SQLite-only install never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from proxy.audit_schema import (
    POSTGRES,
    REQUEST_COLUMNS,
    SCHEMA_VERSION,
    VERDICT_COLUMNS,
    schema_steps,
)
from proxy.audit_store import RECORD, VERDICTS, Row

ERRORS = (psycopg.Error, OSError)
_LOCK = 0x5AFE_A0D1  # advisory lock key: schema migrations and id allocation
CONNECT_TIMEOUT_S = 5

# Version n is reached by running _MIGRATIONS[n - 1] (proxy.audit_schema: both engines'
# tables, reviews included, written once).
_MIGRATIONS = schema_steps(POSTGRES)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and health lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def connect(url: str, **options: Any) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, **options)


def migrate(conn: psycopg.Connection) -> int:
    """Create or bring the schema up to SCHEMA_VERSION; returns the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS safeguard_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM safeguard_schema").fetchone()
        found = (row[0] if row else None) or 0
        if found > SCHEMA_VERSION:
            raise psycopg.errors.FeatureNotSupported(
                f"audit schema version {found} is newer than this gateway's {SCHEMA_VERSION}"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version - 1])
            conn.execute("INSERT INTO safeguard_schema (version) VALUES (%s)", (version,))
    return found


_COPY_REQUESTS = f"COPY requests ({', '.join(REQUEST_COLUMNS)}) FROM STDIN"
_COPY_VERDICTS = f"COPY verdicts ({', '.join(VERDICT_COLUMNS)}) FROM STDIN"


class PgWriter:
    """The recorder's read-write connection (one per writer thread)."""

    errors = ERRORS

    def __init__(self, url: str) -> None:
        self.where = redact_url(url)
        self.conn = connect(url, autocommit=True)
        try:
            migrate(self.conn)
        except BaseException:
            self.conn.close()
            raise

    def insert(self, rows: Sequence[Row]) -> None:
        """One transaction: all of the batch or none of it."""
        conn = self.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()
            first = (row[0] if row else 0) + 1
            with conn.cursor() as cur:
                with cur.copy(_COPY_REQUESTS) as copy:
                    for rid, r in enumerate(rows, first):
                        copy.write_row((rid, *_request_columns(r)))
                with cur.copy(_COPY_VERDICTS) as copy:
                    for rid, r in enumerate(rows, first):
                        for v in r[VERDICTS]:
                            copy.write_row((rid, *map(_text, v[:-1]), int(bool(v[-1]))))

    def purge(self, before: float) -> int:
        """Delete records that started before `before` (unix seconds); their verdicts go
        with them (ON DELETE CASCADE), their reviews first (ids are reused once every record
        is gone: a review left behind would mark a new request)."""
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM reviews WHERE request IN (SELECT id FROM requests WHERE time < %s)",
                (before,),
            )
            cur = self.conn.execute("DELETE FROM requests WHERE time < %s", (before,))
            return cur.rowcount

    def close(self) -> None:
        self.conn.close()


def _request_columns(row: Row) -> tuple[Any, ...]:
    """Typed columns: SQLite keeps any value in any column, PostgreSQL does not, so a time
    or status that is not a number is NULL here (the record's JSON keeps it as it was)."""
    request_id, time, tenant, route, endpoint, model, decision, status = row[:RECORD]
    return (
        _text(request_id),
        time if isinstance(time, int | float) else None,
        *map(_text, (tenant, route, endpoint, model, decision)),
        status if isinstance(status, int) and -(2**31) <= status < 2**31 else None,
        row[RECORD],
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- reading -------------------------------------------------------------------------------

_QUOTED = re.compile(r"('(?:[^']|'')*')")


def pg_sql(sql: str) -> str:
    """SQLite-style SQL (`?` placeholders) in psycopg's style (`%s`, `%` doubled), leaving
    quoted literals alone."""
    parts = _QUOTED.split(sql)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("%", "%%").replace("?", "%s")
    return "".join(parts)


class PgConnection:
    """A connection with the sqlite3 calls the query layer and proxy.reviews make
    (`execute` with `?` placeholders); read-only unless asked (reviews write)."""

    def __init__(self, url: str, *, read_only: bool = True) -> None:
        options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
        self.conn = connect(url, autocommit=True, **options)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        return self.conn.execute(pg_sql(sql), list(params))

    def close(self) -> None:
        self.conn.close()
