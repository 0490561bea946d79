"""The recorder process: `python -m proxy.recorder SETTINGS_VAR STATUS_FD`, started by the
gateway with its settings (JSON) in the environment variable SETTINGS_VAR.

Reads frames from stdin until it closes; audit rows go to an `AuditLog` (SQLite batch
writer, spill file), spans are encoded to OTLP and handed to a `BatchExport`. A status
line (JSON) goes to STATUS_FD every STATUS_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import marshal
import os
import signal
import sys
import threading
from typing import Any

import orjson

from proxy import otlp
from proxy.audit import AuditLog
from proxy.config import Audit
from proxy.recorder.frames import iter_frames

log = logging.getLogger("proxy.audit")

STATUS_S = 0.25


def main(argv: list[str]) -> int:
    # argv[0] names the environment variable holding the settings (or is them, inline)
    raw = os.environ.get(argv[0], argv[0])
    settings, status_fd = orjson.loads(raw), int(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    audit = AuditLog(Audit(**settings["audit"])) if settings["audit"] else None
    export = None
    if settings["otlp"]:
        from proxy.span_export import otlp_export
        from proxy.telemetry import SCOPE, build_resource

        try:
            export = otlp_export(build_resource(settings["service_name"]), SCOPE, encoded=True)
        except Exception:  # e.g. an unreadable OTEL_EXPORTER_OTLP_CERTIFICATE
            log.exception("OTLP span export unavailable; spans are dropped, audit goes on")
    if audit is not None:
        asyncio.run(audit.start())
    status = os.fdopen(status_fd, "wb", buffering=0)
    stop = threading.Event()

    def report() -> None:
        line: dict[str, Any] = {}
        if audit is not None:
            ok, detail = audit.health()
            stats = audit.stats()
            settled = sum(stats[k] for k in ("written", "spilled", "dropped", "rejected"))
            line["audit"] = {"ok": ok, "detail": detail, "settled": settled, **stats}
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
    for kind, payload in iter_frames(sys.stdin.buffer):
        try:
            if kind == b"a" and audit is not None:
                audit.submit_rows(marshal.loads(payload))
            elif kind == b"s" and export is not None:
                spans = marshal.loads(payload)
                export.add(otlp.span_entries(spans), len(spans))
        except Exception:  # a bug: lose this frame, not the recorder
            log.exception("recorder could not read a %r frame", kind)
    stop.set()
    if audit is not None:
        asyncio.run(audit.close())
    if export is not None:
        export.shutdown()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
