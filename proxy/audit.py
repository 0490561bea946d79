"""The audit writer: one record per request, stored off the request path, never dropped.

`AuditLog.submit` applies the retention setting, makes the record a row
(proxy.audit_store.audit_row) and appends it to a deque (microseconds, never raises, no
lock or thread wake-up per record: deque appends and pops are atomic); `submit_rows` takes
rows the gateway has already made. A dedicated thread owns the store's connection (SQLite,
or PostgreSQL for `audit.url`: proxy.audit_store.open_writer) and, every flush interval,
takes what is pending and writes it in batches, one transaction each. When the queue is
full or the store fails, records are appended as JSON lines to the spill file instead, and
`health()` reports degraded until writes succeed again. Between batches a healthy writer
replays the spill file into the store (whichever process spilled there; at least once)
and deletes records older than `audit.retention_days`.
The gateway runs it in its recorder process (proxy.recorder), out of the event loop's way;
when audit is off it is the gateway's no-op stand-in. Reading the store (CLI, admin API)
lives in proxy.audit_store.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from proxy.audit_backends import describe_store, open_writer, store_errors
from proxy.audit_spill import SpillFile, same_file, spill_path
from proxy.audit_store import Row, audit_row, encode
from proxy.config import Audit

log = logging.getLogger("proxy.audit")

RETENTION_MODES = ("full", "redacted", "hash", "none")
_LOG_EVERY_S = 30.0
REPLAY_EVERY_S = 1.0  # how often a healthy writer looks for spilled records to replay
PURGE_EVERY_S = 600.0  # how often `retention_days` deletes old records


def apply_retention(record: Mapping[str, Any], mode: str) -> dict:
    """The record as stored: `content` reduced to {retention, input, output} per `mode`.

    full: the originals; redacted: the *_redacted texts (a missing one means nothing was
    redacted, so the original); hash: "sha256:<hex>" of the originals; none: no content.
    Under hash and none the verdicts also lose their reasoning and rationale text.
    """
    content = record.get("content") or {}
    if mode == "full":
        kept = content.get("input"), content.get("output")
    elif mode == "redacted":
        kept = (
            _redacted(content, "input", "input_redacted"),
            _redacted(content, "output", "output_redacted"),
        )
    elif mode == "hash":
        kept = _digest(content.get("input")), _digest(content.get("output"))
    elif mode == "none":
        kept = None, None
    else:
        raise ValueError(f"audit.content: unknown retention mode {mode!r}")
    stored = dict(record)
    stored["content"] = {"retention": mode, "input": kept[0], "output": kept[1]}
    if mode in ("hash", "none"):
        # The model's reasoning and rationale can quote the content: keep only the labels.
        stored["verdicts"] = [
            {**v, "reasoning": None, "rationale": None} for v in record.get("verdicts") or ()
        ]
    return stored


def stored_row(record: Mapping[str, Any], mode: str) -> Row:
    """The store's row for `record` under retention `mode`. Raises (AttributeError,
    TypeError, ValueError) for what is not a record that can be kept."""
    return audit_row(apply_retention(record, mode))


def stored_rows(records: Iterable[Any], mode: str) -> tuple[list[Row], list[str]]:
    """The rows of those `records` that can be kept, and why each other one cannot (its
    error's type: an error's text may quote the record)."""
    rows, refused = [], []
    for record in records:
        try:
            rows.append(stored_row(record, mode))
        except Exception as exc:  # not a record, or not one that can be encoded
            refused.append(type(exc).__name__)
    return rows, refused


def _redacted(content: Mapping[str, Any], side: str, redacted: str) -> Any:
    text = content.get(redacted)
    return content.get(side) if text is None else text


def _digest(text: Any) -> str | None:
    if text is None:
        return None
    data = text.encode() if isinstance(text, str) else encode(text)
    return "sha256:" + hashlib.sha256(data).hexdigest()


class AuditLog:
    """Queue + background SQLite writer with a JSON-lines spill file."""

    def __init__(self, cfg: Audit, *, reopen_after_s: float = 2.0) -> None:
        if cfg.content not in RETENTION_MODES:
            raise ValueError(f"audit.content: unknown retention mode {cfg.content!r}")
        self.cfg = cfg
        self.path = cfg.path
        self.spill_path = spill_path(cfg)
        self._pending: deque[Row] = deque()  # appended by submit, popped by the writer
        self._capacity = max(1, cfg.queue_size)
        self._stop = threading.Event()
        self._batch_size = max(1, cfg.batch_size)
        self._reopen_after_s = reopen_after_s
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = False
        self._store: Any = None  # SqliteWriter or PgWriter, touched only by the writer thread
        self._store_errors = store_errors(cfg)
        self._where = describe_store(cfg)
        self._reopen_at = 0.0
        self._replay_at = 0.0
        self._purge_at = 0.0
        self._replayed = self._purged = 0
        self._spill_file = SpillFile(self.spill_path)
        self._degraded: str | None = None
        self._logged: tuple[str, float] = ("", 0.0)
        self._written = self._spilled = self._errors = self._dropped = self._batches = 0
        self._rejected = 0

    # -- event-loop side -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer; it opens (creating) the store. A store that cannot be opened
        leaves the log degraded (records spill, the writer retries), not the gateway down."""
        if not self.cfg.enabled or self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self._stop_writer)
        await asyncio.to_thread(self._ready.wait)

    def submit(self, record: Mapping[str, Any]) -> None:
        """Record one request. Cheap, synchronous, never raises."""
        if not self.cfg.enabled:
            return
        rows, refused = stored_rows([record], self.cfg.content)
        if refused:  # nothing we may safely keep
            self._errors += 1
            self._rejected += 1
            self._warn(f"audit record rejected ({refused[0]})")
        self.submit_rows(rows)

    def submit_rows(self, rows: list[Row]) -> None:
        """Rows `stored_row` made, retention applied (the gateway sends its recorder these)."""
        if not self.cfg.enabled or not rows:
            return
        if self._closed:
            self._spill(rows, "audit log closed")
            return
        room = self._capacity - len(self._pending)  # only this method fills the queue
        if len(rows) > room:
            self._spill(rows[room:], f"audit queue full ({self._capacity})")
            rows = rows[:room]
        self._pending.extend(rows)

    async def close(self) -> None:
        """Write everything queued, then stop. Records submitted afterwards are spilled."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._stop_writer)
        atexit.unregister(self._stop_writer)

    def health(self) -> tuple[bool, str]:
        if not self.cfg.enabled:
            return True, "audit disabled"
        spilled = f"; {self._spilled} records spilled to {self.spill_path}" if self._spilled else ""
        if self._degraded:
            return False, f"audit degraded: {self._degraded}{spilled}"
        if self._thread is None or not self._thread.is_alive():
            return False, "audit writer not running"
        return True, f"audit ok{spilled}"

    def stats(self) -> dict:
        return {
            "queued": len(self._pending),
            "written": self._written,
            "batches": self._batches,
            "spilled": self._spilled,
            "errors": self._errors,
            "dropped": self._dropped,  # spill file unwritable too: truly lost
            "rejected": self._rejected,  # not a record at all
            "replayed": self._replayed,  # spilled records stored since (any process's)
            "purged": self._purged,  # deleted by retention_days
            "degraded": self._degraded is not None,
        }

    # -- writer thread ---------------------------------------------------------------------

    def _stop_writer(self) -> None:
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()  # the writer drains everything pending, then exits
            self._thread.join()
        if leftovers := self._take():  # submitted without a writer, or raced in after it
            self._spill(leftovers, "audit log closed")
        self._spill_file.close()

    def _run(self) -> None:
        self._open()
        self._ready.set()
        while True:
            stopping = self._stop.wait(self.cfg.flush_interval_s)
            batch = self._take()
            for start in range(0, len(batch), self._batch_size):
                chunk = batch[start : start + self._batch_size]
                try:
                    self._write(chunk)
                except Exception as exc:  # a bug must not kill the writer or lose the batch
                    self._errors += 1
                    self._spill(chunk, f"audit writer error ({type(exc).__name__})")
            if stopping and not self._pending:
                break
            try:
                self._upkeep()
            except Exception:  # a bug here must not stop the writer
                log.exception("audit store upkeep failed")
        if self._store is not None:
            self._store.close()
            self._store = None

    def _take(self) -> list[Row]:
        """Everything submitted so far; what arrives meanwhile waits for the next round."""
        pending = self._pending
        return [pending.popleft() for _ in range(len(pending))]

    def _open(self) -> Any:
        if self._store is None and time.monotonic() >= self._reopen_at:
            try:
                self._store = open_writer(self.cfg)
            except self._store_errors as exc:
                self._errors += 1
                self._reopen_at = time.monotonic() + self._reopen_after_s
                self._degrade(f"cannot open audit store {self._where} ({_describe(exc)})")
        return self._store

    def _insert(self, rows: list[Row]) -> bool:
        """Store rows in one transaction; False (the store closed, to be reopened) on failure."""
        store = self._open()
        if store is None:
            return False
        try:
            store.insert(rows)
        except self._store_errors as exc:
            self._errors += 1
            self._store = None  # reopened for the next batch (a replaced file, a freed disk)
            self._reopen_at = time.monotonic() + self._reopen_after_s
            with contextlib.suppress(Exception):
                store.close()
            self._degrade(f"audit store write failed ({_describe(exc)})")
            return False
        return True

    def _write(self, batch: list[Row]) -> None:
        if not self._insert(batch):
            self._spill(batch, self._degraded or "audit store unavailable")
            return
        self._written += len(batch)
        self._batches += 1
        if self._degraded and len(self._pending) <= self._capacity // 2:
            self._degraded = None
            log.warning(
                "audit store healthy again (%d written, %d spilled)", self._written, self._spilled
            )

    def _upkeep(self) -> None:
        """Between batches: replay spilled records once the store takes writes again, and
        delete records older than `retention_days`."""
        now = time.monotonic()
        if now >= self._replay_at:
            self._replay_at = now + REPLAY_EVERY_S
            if self._spill_file.pending() and self._open() is not None:
                self._replay()
        if self.cfg.retention_days and now >= self._purge_at and self._open() is not None:
            self._purge_at = now + PURGE_EVERY_S
            before = time.time() - self.cfg.retention_days * 86400
            try:
                self._purged += self._store.purge(before)
            except self._store_errors as exc:
                self._purge_at = now + self._reopen_after_s
                log.warning("audit retention purge failed (%s)", _describe(exc))

    def _replay(self) -> None:
        """Store what was spilled (by this process or any other sharing the spill file),
        batch by batch; what cannot be stored yet goes back to the spill file."""
        for path in self._spill_file.take():
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as file:
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another recorder is replaying it
                    continue
                if not same_file(file, path):  # replayed and removed meanwhile
                    continue
                lines = file.read().decode(errors="replace").splitlines()
                done = self._replay_lines([line for line in lines if line.strip()])
                if done < len(lines):
                    self._spill_file.write_lines(lines[done:])
                os.unlink(path)
            if self._store is None:
                return

    def _replay_lines(self, lines: list[str]) -> int:
        """How many of `lines` are stored (the rest wait for the next replay)."""
        done = 0
        while done < len(lines):
            chunk = lines[done : done + self._batch_size]
            rows = []
            for line in chunk:
                try:
                    rows.append(audit_row(orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError, AttributeError):
                    self._errors += 1  # a torn line (a crash mid-write): not a record
            if rows and not self._insert(rows):
                return done
            done += len(chunk)
            self._replayed += len(rows)
        if done:
            log.warning("replayed %d spilled audit records into %s", done, self._where)
        if self._degraded and not self._pending:
            self._degraded = None
        return done

    # -- spill (either thread) -------------------------------------------------------------

    def _spill(self, rows: list[Row], reason: str) -> None:
        try:
            self._spill_file.write(rows)
            self._spilled += len(rows)
        except OSError as exc:
            self._dropped += len(rows)
            self._errors += 1
            reason = f"{reason}; spill to {self.spill_path} failed ({_describe(exc)})"
        self._degrade(reason)

    def _degrade(self, reason: str) -> None:
        self._degraded = reason
        self._warn(
            f"{reason}; spilling to {self.spill_path} "
            f"(spilled={self._spilled}, dropped={self._dropped})"
        )

    def _warn(self, message: str) -> None:
        """Rate-limited warning; messages carry counts and paths, never record content."""
        head = message.split(";")[0]
        now = time.monotonic()
        last_head, last_at = self._logged
        if head != last_head or now - last_at >= _LOG_EVERY_S:
            self._logged = (head, now)
            log.warning("%s", message)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
