"""The audit store's seam: which engine the config names, opened for the writer thread.

SQLite at `audit.path` is the default; `audit.url: postgresql://...` selects PostgreSQL
(proxy.audit_pg, imported only then). A writer has `insert(rows)`, `purge(before)` and
`close()`; `store_errors` is what it raises when the store fails (the batch is then
spilled and the store reopened). Readers: proxy.audit_store.open_reader.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.audit_store import Row, insert_rows, open_store
from proxy.config import Audit


class SqliteWriter:
    """The writer thread's read-write store (proxy.audit_pg.PgWriter is the other one)."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: str | Path) -> None:
        self.where = str(path)
        self.conn = open_store(path)

    def insert(self, rows: Sequence[Row]) -> None:
        insert_rows(self.conn, rows)

    def purge(self, before: float) -> int:
        """Delete records that started before `before` (unix seconds), their verdicts and
        reviews first (ids are reused once every record is gone: a review left behind would
        mark a new request)."""
        with self.conn:
            old = "SELECT id FROM requests WHERE time < ?"
            for table in ("reviews", "verdicts"):
                self.conn.execute(f"DELETE FROM {table} WHERE request IN ({old})", (before,))
            return self.conn.execute("DELETE FROM requests WHERE time < ?", (before,)).rowcount

    def close(self) -> None:
        self.conn.close()


def open_writer(cfg: Audit) -> Any:
    """The store named by the config, read-write, its schema created or migrated:
    PostgreSQL for `audit.url`, else SQLite at `audit.path`."""
    if cfg.url:
        from proxy.audit_pg import PgWriter

        return PgWriter(cfg.url)
    return SqliteWriter(cfg.path)


def store_errors(cfg: Audit) -> tuple[type[BaseException], ...]:
    """What a failing store raises (a write is spilled and the store reopened on these)."""
    if cfg.url:
        from proxy.audit_pg import ERRORS

        return ERRORS
    return SqliteWriter.errors


def describe_store(cfg: Audit) -> str:
    """The store's name for messages: the path, or the URL without its password."""
    if cfg.url:
        from proxy.audit_pg import redact_url

        return redact_url(cfg.url)
    return cfg.path


def ensure_schema(cfg: Audit, *, create: bool = False) -> bool:
    """Create or migrate the store's schema as its writer does on opening (for a reader
    that also writes: the console). A SQLite file not created yet is left alone (False:
    the gateway's writer makes it) unless `create`."""
    if not (cfg.url or create or Path(cfg.path).is_file()):
        return False
    open_writer(cfg).close()
    return True


def open_writable(cfg: Audit) -> Any:
    """A read-write connection in sqlite3's call shape, outside the writer thread (the
    console's reviews and sign-outs): PostgreSQL (autocommit) for `audit.url`, else the
    SQLite file (which must exist: `ensure_schema`)."""
    if cfg.url:
        from proxy.audit_pg import PgConnection

        return PgConnection(cfg.url, read_only=False)
    return sqlite3.connect(cfg.path, timeout=5.0)


def is_postgres(conn: Any) -> bool:
    """A PostgreSQL connection (proxy.audit_pg's), else sqlite3's."""
    return not isinstance(conn, sqlite3.Connection)


def transaction(conn: Any) -> Any:
    """sqlite3's commit-or-rollback block; a PostgreSQL connection here autocommits."""
    return conn if not is_postgres(conn) else contextlib.nullcontext()
