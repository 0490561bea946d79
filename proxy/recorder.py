"""The recorder: audit records and finished spans leave the gateway's process.

Writing SQLite and encoding and POSTing spans are CPU work, and a thread doing it in the
gateway's process competes with the event loop for the GIL; measured, audit on plus
every request traced took the gateway from 1.0 to ~0.65x of its throughput that way.
So one child process per gateway worker does both:

    gateway worker (event loop)                     recorder (python -m proxy.recorder)
      submit(record) / add(span): a list append       AuditLog: batch writer, SQLite WAL,
      every FLUSH_S: records as one orjson frame,       retention, spill file
        spans encoded to OTLP protobuf (proxy.otlp) BatchExport: OTLP/HTTP POSTs
        in one frame, down a pipe, without blocking
      health()/stats() <--- a status line every STATUS_S (JSON) on a second pipe

The gateway encodes spans itself: ~4 us a span, where serializing them for the recorder
costs ~3 us and rebuilding and encoding them there ~9 us more, on the same cores.
`traces: console` stays in the gateway's process (a debugging aid; speed is not its point).

Frames on the data pipe: a kind byte, a 4-byte big-endian length, the payload: b"a" audit
records as an orjson array, b"o" a 4-byte span count then `otlp.span_entries` bytes.
The recorder ignores SIGINT/SIGTERM: it stops when the data pipe closes (the gateway's
shutdown, or its death), after writing and exporting everything it was sent. If the
recorder dies, the gateway spills audit records to the JSON-lines spill file itself,
reports degraded, and starts a new recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import gc
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from proxy import otlp
from proxy.audit import AuditLog, apply_retention
from proxy.audit_store import encode
from proxy.config import Audit, Config

log = logging.getLogger("proxy.audit")

FLUSH_S = 0.05
STATUS_S = 0.25
RESTART_AFTER_S = 5.0
MAX_BACKLOG = 64 << 20  # bytes waiting for the recorder before records spill here
_HEADER = struct.Struct(">cI")
_F_SETPIPE_SZ = 1031
_COUNT = struct.Struct(">I")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def records_frame(records: list[Any]) -> bytes:
    return frame(b"a", orjson.dumps(records, default=str, option=orjson.OPT_NON_STR_KEYS))


def spans_frame(spans: list[Any]) -> bytes:
    return frame(b"o", _COUNT.pack(len(spans)) + otlp.span_entries(spans))


def read_frames(buffer: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Complete frames (kind, payload) at the start of `buffer`, and the incomplete rest."""
    frames, at = [], 0
    while len(buffer) - at >= _HEADER.size:
        kind, size = _HEADER.unpack_from(buffer, at)
        end = at + _HEADER.size + size
        if end > len(buffer):
            break
        frames.append((kind, buffer[at + _HEADER.size : end]))
        at = end
    return frames, buffer[at:]


# -- the gateway's side ------------------------------------------------------------------------


class Recorder:
    """Ships audit records and spans to the recorder process; `AuditLog`'s API for the
    gateway (start, submit, close, health, stats) and a span sink for Telemetry (add)."""

    def __init__(self, config: Config, *, audit: bool, spans: bool) -> None:
        self.cfg = config.audit
        self.spill_path = self.cfg.spill_path or f"{self.cfg.path}.spill.jsonl"
        self._settings = orjson.dumps(
            {
                "audit": dataclasses.asdict(config.audit) if audit else None,
                "otlp": spans,
                "service_name": config.telemetry.service_name,
            }
        ).decode()
        self._audit = audit
        self._records: list[Any] = []
        self._spans: list[Any] = []
        self._frames: deque[bytes] = deque()  # not yet (wholly) taken by the pipe
        self._sent = 0  # bytes of the first frame already in the pipe
        self._backlog = 0  # bytes in _frames
        self._proc: subprocess.Popen[bytes] | None = None
        self._status: dict[str, Any] = {}
        self._status_buffer = b""
        self._status_fd = -1
        self._first_status: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False
        self._closed = False
        self._down_since = 0.0
        self._problem: str | None = None
        self._spilled = self._dropped_spans = self._exits = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        if self._first_status is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first_status), 15)
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _spawn(self) -> None:
        status_read, status_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.recorder", self._settings, str(status_write)],
                stdin=subprocess.PIPE,
                pass_fds=(status_write,),
                start_new_session=True,  # a terminal's Ctrl-C is the gateway's to handle
            )
        except OSError as exc:
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
        assert self._loop is not None
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
            self._writable(False)  # the rest is written by _finish, blocking, in a thread
            await asyncio.to_thread(self._finish, proc)
            self._read_status()
            self._release(proc)
        self._salvage()

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), True)
        try:
            self._write()
            proc.stdin.close()
            proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("audit recorder did not finish cleanly (%s)", exc)
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
        """Record one request (retention is applied by the recorder). Never raises."""
        if self._closed:
            self._spill([record], "audit log closed")
            return
        self._records.append(record)

    def add(self, span: Any) -> None:
        """A finished span, for export."""
        if not self._closed:
            self._spans.append(span)

    # -- shipping --------------------------------------------------------------------------

    def _tick(self) -> None:
        self._ship()
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._recorder_died(proc)
        elif proc is None and time.monotonic() - self._down_since >= RESTART_AFTER_S:
            self._spawn()
        if not self._closed and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _ship(self) -> None:
        records, spans = self._records, self._spans
        self._records, self._spans = [], []
        if self._proc is None:
            if records:
                self._spill(records, self._problem or "audit recorder not running")
            self._dropped_spans += len(spans)
            return
        if self._backlog > MAX_BACKLOG:
            if records:
                self._spill(records, "audit recorder is behind")
            self._dropped_spans += len(spans)
            return
        if spans:
            self._queue(spans_frame(spans))
        if records:
            try:
                self._queue(records_frame(records))
            except (TypeError, ValueError) as exc:  # not JSON-able: keep what can be kept
                log.error("audit batch not serializable (%s)", exc)
                self._spill(records, "audit batch not serializable")
        self._write()

    def _queue(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._backlog += len(frame)

    def _write(self) -> None:
        """As much as the pipe takes now; the loop calls again once it takes more."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        fd, frames = proc.stdin.fileno(), self._frames
        try:
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
        except OSError:  # the recorder is gone: _tick notices, salvages and restarts it
            self._writable(False)
            return
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
        self._release(proc)
        self._down(f"audit recorder exited with code {proc.returncode}")
        self._salvage()

    def _down(self, problem: str) -> None:
        self._proc = None
        self._problem = problem
        self._down_since = time.monotonic()
        log.error("%s; spilling audit records to %s until it is back", problem, self.spill_path)

    def _salvage(self) -> None:
        """Frames a gone recorder did not take whole: audit records to the spill file.
        (Records it had read but not yet written went with it.)"""
        frames, _ = read_frames(b"".join(self._frames))
        self._frames.clear()
        self._sent = self._backlog = 0
        for kind, payload in frames:
            if kind == b"a":
                self._spill(orjson.loads(payload), "audit recorder exited")
            else:
                self._dropped_spans += _COUNT.unpack_from(payload)[0]

    def _spill(self, records: list[Any], reason: str) -> None:
        if not records or not self._audit:
            return
        try:
            lines = [encode(apply_retention(r, self.cfg.content)) + b"\n" for r in records]
            with open(self.spill_path, "ab") as f:
                f.write(b"".join(lines))
            self._spilled += len(records)
        except (OSError, TypeError, ValueError, AttributeError) as exc:
            log.error("%s; spilling %d audit records failed (%s)", reason, len(records), exc)

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
        *lines, self._status_buffer = (self._status_buffer + chunk).split(b"\n")
        for line in reversed(lines):
            if line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self._status = orjson.loads(line)
                    break
        if self._first_status is not None and not self._first_status.done():
            self._first_status.set_result(None)

    def health(self) -> tuple[bool, str]:
        if not self._audit:
            return True, "audit disabled"
        spilled = f"; {self._spilled} records spilled to {self.spill_path}" if self._spilled else ""
        if self._problem:
            return False, f"audit degraded: {self._problem}{spilled}"
        audit = self._status.get("audit")
        if not audit:
            return False, "audit recorder starting"
        return audit["ok"], audit["detail"] + spilled

    def stats(self) -> dict[str, Any]:
        audit = self._status.get("audit") or {}
        return {
            "queued": len(self._records) + audit.get("queued", 0),
            "written": audit.get("written", 0),
            "batches": audit.get("batches", 0),
            "spilled": audit.get("spilled", 0) + self._spilled,
            "errors": audit.get("errors", 0) + self._exits,
            "dropped": audit.get("dropped", 0),
            "degraded": bool(self._problem) or audit.get("degraded", False),
        }

    # Telemetry's span sink API; the gateway closes the recorder itself.
    def force_flush(self, timeout_s: float = 30.0) -> bool:
        self._ship()
        return True

    def shutdown(self) -> None:
        return None


# -- the recorder process ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    settings, status_fd = orjson.loads(argv[0]), int(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    audit = AuditLog(Audit(**settings["audit"])) if settings["audit"] else None
    export = None
    if settings["otlp"]:
        from proxy.span_export import otlp_export
        from proxy.telemetry import SCOPE, build_resource

        export = otlp_export(build_resource(settings["service_name"]), SCOPE, encoded=True)
    if audit is not None:
        asyncio.run(audit.start())
    status = os.fdopen(status_fd, "wb", buffering=0)
    stop = threading.Event()

    def report() -> None:
        line: dict[str, Any] = {}
        if audit is not None:
            ok, detail = audit.health()
            line["audit"] = {"ok": ok, "detail": detail, **audit.stats()}
        if export is not None:
            line["spans"] = {k: getattr(export, k, 0) for k in ("exported", "dropped", "failed")}
        with contextlib.suppress(OSError):
            status.write(orjson.dumps(line) + b"\n")

    def reporter() -> None:
        rounds = 0
        while not stop.wait(STATUS_S):
            report()
            rounds += 1
            if rounds % 120 == 0:
                gc.collect()

    report()
    threading.Thread(target=reporter, name="recorder-status", daemon=True).start()
    # Everything here is acyclic and short-lived: reference counting frees it, and the
    # cyclic collector, which would otherwise run every few hundred allocations over
    # every queued record and span, stays off (the status thread runs it now and then).
    gc.freeze()
    gc.disable()
    pending = b""
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    while chunk := stdin.read(1 << 20):
        frames, pending = read_frames(pending + chunk)
        for kind, payload in frames:
            if kind == b"a" and audit is not None:
                for record in orjson.loads(payload):
                    audit.submit(record)
            elif kind == b"o" and export is not None:
                export.add(payload[_COUNT.size :], _COUNT.unpack_from(payload)[0])
    stop.set()
    if audit is not None:
        asyncio.run(audit.close())
    if export is not None:
        export.shutdown()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
