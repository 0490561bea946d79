"""The recorder: audit records and finished spans leave the gateway's process.

Writing SQLite and encoding and POSTing spans are CPU work, and a thread doing it in the
gateway's process competes with the event loop for the GIL; measured, audit on plus
every request traced took the gateway from 1.0 to ~0.65x of its throughput that way.
So one child process per gateway worker does both:

    gateway worker (event loop)                     recorder (python -m proxy.recorder)
      submit(record) / add(span): a list append       AuditLog: batch writer, SQLite WAL,
      every FLUSH_S: one frame of audit rows, one       spill file
        of spans, down a pipe, without blocking --->  spans encoded to OTLP (proxy.otlp),
                                                        BatchExport POSTs them
      health()/stats() <--- a status line every STATUS_S (JSON) on a second pipe

Finished spans travel as `marshal`ed tuples (~1 us a request for the event loop, where
encoding them to OTLP takes ~9 us), so the worker keeps its core for serving and the
recorder encodes them (proxy.otlp). Audit records travel as the store's rows, retention
applied (`proxy.audit.stored_row`, ~3 us a record): content that is not kept never leaves
the gateway, and the recorder only inserts rows instead of parsing, reducing and encoding
each record again. `traces: console` stays in the gateway's process (a debugging aid;
speed is not its point).

Modules: `frames` (the pipe's format), `handle` (the gateway's side: `Recorder`),
`__main__` (the recorder process). The recorder ignores SIGINT/SIGTERM: it stops when the
data pipe closes (the gateway's shutdown, or its death), after writing and exporting
everything it was sent. Audit records stay with the gateway until the recorder reports
them stored; if it dies, the gateway spills what it had not stored to the JSON-lines spill
file, reports degraded, and starts a new recorder.
"""

from proxy.recorder.handle import Recorder

__all__ = ["Recorder"]
