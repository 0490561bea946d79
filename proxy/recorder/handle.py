"""The gateway's side of the recorder: buffer, frame, ship, watch, and take over if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import marshal
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.audit import SpillFile, spill_path, stored_rows
from proxy.audit_store import Row
from proxy.config import Config
from proxy.recorder.frames import HEADER, rows_frame, spans_frame
from proxy.span_export import SpanExport

log = logging.getLogger("proxy.audit")

FLUSH_S = 0.05
RESTART_AFTER_S = 5.0
SILENT_AFTER_S = 10.0  # no status line for this long: the recorder is stuck
MAX_BACKLOG = 64 << 20  # bytes waiting for the recorder before records spill here
_F_SETPIPE_SZ = 1031
SETTINGS_ENV = "SAFEGUARD_RECORDER_SETTINGS"


class Recorder(SpanExport):
    """Ships audit records and spans to the recorder process; `AuditLog`'s API for the
    gateway (start, submit, close, health, stats) and a span sink for Telemetry (add).

    Audit records are kept until the recorder's status says it has settled them (stored,
    spilled, or dropped when even the spill file fails), so a recorder that dies takes
    none with it: what it had not settled is spilled here (at least once: a record it
    settled just before dying may then be in both the store and the spill file).
    """

    def __init__(self, config: Config, *, audit: bool, spans: bool) -> None:
        self.cfg = config.audit
        self.spill_path = spill_path(self.cfg)
        self._spill_file = SpillFile(self.spill_path)
        self._settings = orjson.dumps(
            {
                "audit": dataclasses.asdict(config.audit) if audit else None,
                "otlp": spans,
                "service_name": config.telemetry.service_name,
            }
        ).decode()
        self._audit = audit
        self._otlp = spans
        self._records: list[Any] = []  # for the next frame
        self._spans: list[Any] = []
        self._frames: deque[bytes] = deque()  # not yet (wholly) taken by the pipe
        self._sent = 0  # bytes of the first frame already in the pipe
        self._backlog = 0  # bytes in _frames
        self._unsettled: deque[tuple[int, bytes]] = deque()  # (sequence at end, records frame)
        self._sequence = 0  # records framed for the current recorder
        self._proc: subprocess.Popen[bytes] | None = None
        self._status: dict[str, Any] = {}  # the current recorder's latest status line
        self._status_at = 0.0  # when it came
        self._before: dict[str, int] = {}  # counters of recorders that have exited
        self._status_buffer = b""
        self._status_fd = -1
        self._first_status: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False
        self._closed = False
        self._down_since = 0.0
        self._problem: str | None = None
        self._spilled = self._dropped = self._rejected = self._dropped_spans = self._exits = 0
        self._errors = 0  # records rejected here and failed spills here (not the recorder's)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the recorder process, if there is anything for it to do."""
        if self._loop is not None or self._closed or not (self._audit or self._otlp):
            return
        self._loop = asyncio.get_running_loop()
        self._spawn()
        if self._first_status is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first_status), 15)
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _spawn(self) -> None:
        assert self._loop is not None
        try:
            status_read, status_write = os.pipe()
        except OSError as exc:
            self._down(f"cannot start the audit recorder ({exc})")
            return
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.recorder", SETTINGS_ENV, str(status_write)],
                # in the environment, not argv: an audit.url may carry a password, and any
                # local user can read a process's arguments
                env={**os.environ, SETTINGS_ENV: self._settings},
                stdin=subprocess.PIPE,
                pass_fds=(status_write,),
                start_new_session=True,  # a terminal's Ctrl-C is the gateway's to handle
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(status_read)
            self._down(f"cannot start the audit recorder ({exc})")
            return
        finally:
            os.close(status_write)
        assert self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(fd, False)
        os.set_blocking(status_read, False)
        self._status_fd = status_read
        self._status_buffer = b""
        self._sequence = 0
        self._first_status = self._loop.create_future()
        self._loop.add_reader(status_read, self._read_status)
        self._problem = None

    async def close(self) -> None:
        """Send everything, let the recorder finish writing and exporting, then stop it."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._ship()
        proc = self._proc
        if proc is not None:
            self._writable(False)  # the rest is written by _finish, in a thread
            await asyncio.to_thread(self._finish, proc)
            self._read_status()
            self._release(proc)
        self._spill_unsettled("audit recorder stopped before storing them")
        self._spill_file.close()

    def _finish(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
        """Write what is left, close the pipe, wait for the recorder: all within timeout_s."""
        assert proc.stdin is not None
        deadline = time.monotonic() + timeout_s
        try:
            while self._frames and time.monotonic() < deadline:
                select.select([], [proc.stdin], [], max(0.0, deadline - time.monotonic()))
                self._write(watch=False)
                if proc.poll() is not None:
                    break
            proc.stdin.close()
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            log.error("audit recorder did not finish in time (%s); stopping it", exc)
            proc.kill()
            proc.wait()

    def _release(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a recorder that has exited: its pipes and their loop callbacks."""
        self._writable(False)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._status_fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1
        self._proc = None

    # -- the request path ------------------------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> None:
        """Record one request (made a store row, retention applied, at the next tick). Never
        raises."""
        if self._closed or self._loop is None:  # no recorder will ever take it
            self._spill([record], "audit log closed" if self._closed else "audit log not started")
            return
        self._records.append(record)

    def add(self, span: Any) -> None:
        """A finished span, for export."""
        if self._closed or self._loop is None:
            self._dropped_spans += 1
            return
        self._spans.append(span)

    # -- shipping --------------------------------------------------------------------------

    def _tick(self) -> None:
        try:
            self._ship()
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._recorder_died(proc)
            elif proc is None and time.monotonic() - self._down_since >= RESTART_AFTER_S:
                self._spawn()
        except Exception:  # a bug here must not stop shipping for good
            log.exception("audit recorder upkeep failed")
        finally:
            if not self._closed and self._loop is not None:
                self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _ship(self) -> None:
        records, spans = self._records, self._spans
        self._records, self._spans = [], []
        if self._proc is None or self._backlog > MAX_BACKLOG:
            reason = self._problem or "audit recorder not running"
            self._spill(records, reason if self._proc is None else "audit recorder is behind")
            self._dropped_spans += len(spans)
            return
        if rows := self._rows(records):
            framed = rows_frame(rows)
            self._queue(framed)
            self._sequence += len(rows)
            self._unsettled.append((self._sequence, framed))
        if spans:
            try:
                self._queue(spans_frame(spans))
            except (TypeError, ValueError) as exc:
                log.error("%d spans not encodable (%s)", len(spans), exc)
                self._dropped_spans += len(spans)
        self._write()

    def _queue(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._backlog += len(frame)

    def _write(self, watch: bool = True) -> None:
        """As much as the pipe takes now. With `watch` (on the event loop's thread) the
        loop calls again once the pipe takes more; `_finish` writes without it."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        frames = self._frames
        try:
            fd = proc.stdin.fileno()
            while frames:
                head = frames[0]
                self._sent += os.write(fd, memoryview(head)[self._sent :])
                if self._sent < len(head):
                    continue
                frames.popleft()
                self._backlog -= len(head)
                self._sent = 0
        except BlockingIOError:
            pass
        except (OSError, ValueError):  # the recorder is gone: _tick notices and restarts it
            frames = deque()
        if watch:
            self._writable(bool(frames))

    def _writable(self, wanted: bool) -> None:
        proc, loop = self._proc, self._loop
        if wanted == self._writing or proc is None or proc.stdin is None or loop is None:
            return
        if wanted:
            loop.add_writer(proc.stdin.fileno(), self._write)
        else:
            loop.remove_writer(proc.stdin.fileno())
        self._writing = wanted

    def _recorder_died(self, proc: subprocess.Popen[bytes]) -> None:
        self._exits += 1
        self._read_status()
        self._release(proc)
        self._down(f"audit recorder exited with code {proc.returncode}")
        for key in ("audit", "spans"):
            for name, value in (self._status.get(key) or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    self._before[f"{key}.{name}"] = self._before.get(f"{key}.{name}", 0) + value
        self._status = {}
        self._dropped_spans += sum(
            len(marshal.loads(f[HEADER.size :])) for f in self._frames if f[:1] == b"s"
        )  # each queued item is one whole frame
        self._frames.clear()
        self._sent = self._backlog = 0
        self._spill_unsettled("audit recorder exited")

    def _down(self, problem: str) -> None:
        self._proc = None
        self._problem = problem
        self._down_since = time.monotonic()
        log.error("%s; spilling audit records to %s until it is back", problem, self.spill_path)

    def _rows(self, records: list[Any]) -> list[Row]:
        """The store's rows for `records`, retention applied: the recorder only writes them."""
        rows, refused = stored_rows(records, self.cfg.content)
        if refused:  # a bug upstream of here; one line a batch, not one a record
            self._rejected += len(refused)
            self._errors += len(refused)
            log.error("%d audit records rejected (%s)", len(refused), refused[0])
        return rows

    def _spill_unsettled(self, reason: str) -> None:
        while self._unsettled:
            framed = self._unsettled.popleft()[1]
            self._spill_rows(marshal.loads(framed[HEADER.size :]), reason)

    def _spill(self, records: list[Any], reason: str) -> None:
        if records and self._audit:
            self._spill_rows(self._rows(records), reason)

    def _spill_rows(self, rows: list[Row], reason: str) -> None:
        if not rows:
            return
        try:
            self._spill_file.write(rows)
            self._spilled += len(rows)
        except OSError as exc:
            self._dropped += len(rows)
            self._errors += 1
            log.error("%s; spilling %d audit records failed (%s)", reason, len(rows), exc)

    # -- status ----------------------------------------------------------------------------

    def _read_status(self) -> None:
        if self._status_fd < 0:
            return
        try:
            chunk = os.read(self._status_fd, 1 << 16)
        except (BlockingIOError, OSError):
            return
        if not chunk:  # the recorder closed it (exiting): stop watching
            if self._loop is not None:
                self._loop.remove_reader(self._status_fd)
            if self._first_status is not None and not self._first_status.done():
                self._first_status.set_result(None)
            return
        self._status_at = time.monotonic()
        *lines, self._status_buffer = (self._status_buffer + chunk).split(b"\n")
        for line in reversed(lines):
            if line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self._status = orjson.loads(line)
                    break
        settled = self._audit_status.get("settled", 0)
        while self._unsettled and self._unsettled[0][0] <= settled:
            self._unsettled.popleft()
        if self._first_status is not None and not self._first_status.done():
            self._first_status.set_result(None)

    @property
    def _audit_status(self) -> dict[str, Any]:
        return self._status.get("audit") or {}

    def _counter(self, key: str, name: str) -> int:
        return (self._status.get(key) or {}).get(name, 0) + self._before.get(f"{key}.{name}", 0)

    def health(self) -> tuple[bool, str]:
        if not self._audit:
            return True, "audit disabled"
        spilled = f"; {self._spilled} records spilled to {self.spill_path}" if self._spilled else ""
        if self._problem:
            return False, f"audit degraded: {self._problem}{spilled}"
        audit = self._status.get("audit")
        if not audit:
            return False, "audit recorder starting"
        silent = time.monotonic() - self._status_at
        if silent > SILENT_AFTER_S:
            return False, f"audit degraded: the recorder has not reported for {silent:.0f} s"
        return audit["ok"], audit["detail"] + spilled

    def stats(self) -> dict[str, Any]:
        """AuditLog.stats() across every recorder this gateway has run (counters only grow)."""
        return {
            "queued": len(self._records) + self._audit_status.get("queued", 0),
            "written": self._counter("audit", "written"),
            "batches": self._counter("audit", "batches"),
            "spilled": self._counter("audit", "spilled") + self._spilled,
            "errors": self._counter("audit", "errors") + self._exits + self._errors,
            "dropped": self._counter("audit", "dropped") + self._dropped,
            "rejected": self._counter("audit", "rejected") + self._rejected,
            "degraded": bool(self._problem) or self._audit_status.get("degraded", False),
        }

    def span_stats(self) -> dict[str, int]:
        return {
            "exported": self._counter("spans", "exported"),
            "failed": self._counter("spans", "failed"),
            "dropped": self._counter("spans", "dropped") + self._dropped_spans,
        }

    # SpanExport: spans reach the recorder at the next tick; the gateway closes it itself.
    def force_flush(self, timeout_s: float = 30.0) -> bool:
        if self._loop is not None and not self._closed:
            self._ship()
        return True
