"""`server.workers: N` as one server: a supervisor process and N uvicorn workers.

Modules: `supervisor` (the main process: binds, spawns, reloads, sums metrics, answers
readiness), `worker` (a worker's entry point and its `WorkerLink`), `wire` (the
request/reply line between them).
"""
