"""The recorder process: framing, spans out through it, and surviving its death."""

from __future__ import annotations

import asyncio
import io
import marshal
import os
import signal
import time
from collections import deque
from pathlib import Path

import httpx
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.audit import stored_row
from proxy.audit_store import query
from proxy.config import parse_config
from proxy.recorder import Recorder, handle
from proxy.recorder.frames import iter_frames, rows_frame, spans_frame
from proxy.spans import SERVER, Span
from tests.conftest import (
    KEY,
    audit_records,
    base_config,
    start_gateway_process,
    write_config_file,
)
from tests.test_guard import chat, client
from tests.test_telemetry import attrs

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def recorder_pid(parent: int) -> int:
    """The gateway process's one child: its recorder."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


# -- framing (pure) ------------------------------------------------------------------------------


class Pipe(io.RawIOBase):
    """A pipe that hands the bytes over in the given pieces, one read at a time at most."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = deque(p for p in pieces if p)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self.pieces:
            return 0
        piece = self.pieces[0][: len(buffer)]
        self.pieces[0] = self.pieces[0][len(piece) :]
        if not self.pieces[0]:
            self.pieces.popleft()
        buffer[: len(piece)] = piece
        return len(piece)


def frames_through(*pieces: bytes) -> list[tuple[bytes, bytes]]:
    return list(iter_frames(io.BufferedReader(Pipe(*pieces))))


def test_frames_come_back_whole_however_the_pipe_splits_them():
    span = Span("POST /v1/chat/completions", SERVER, 7, 0, False, "", {"k": "v"}, None)
    span.end()
    rows = [stored_row({"request_id": "req_1", "verdicts": [], "content": {"input": "hé"}}, "full")]
    stream = rows_frame(rows) + spans_frame([span, span]) + rows_frame(rows[:0])
    for cut in range(len(stream) + 1):
        kinds = [kind for kind, _ in frames_through(stream[:cut], stream[cut:])]
        assert kinds == [b"a", b"s", b"a"]
    (_, audit), (_, spans), (_, empty) = frames_through(stream)
    assert marshal.loads(audit) == rows
    assert [fields[0] for fields in marshal.loads(spans)] == [span.name, span.name]
    assert marshal.loads(empty) == []
    assert [kind for kind, _ in frames_through(stream[:-1])] == [b"a", b"s"]  # torn: dropped


def test_large_frames_come_back_whole_from_a_pipe_that_trickles():
    span = Span("POST /v1/chat/completions", SERVER, 7, 0, False, "", {"k": "v"}, None)
    span.end()
    records = [{"request_id": f"req_{i}", "content": {"input": "x" * 500}} for i in range(300)]
    rows = [stored_row(record, "full") for record in records]
    stream = rows_frame(rows) + spans_frame([span] * 200) + rows_frame([])
    for step in (1, 7, 4096, 1 << 20):
        frames = frames_through(*(stream[i : i + step] for i in range(0, len(stream), step)))
        assert [kind for kind, _ in frames] == [b"a", b"s", b"a"]
        assert marshal.loads(frames[0][1]) == rows
        assert len(marshal.loads(frames[1][1])) == 200


# -- spans through the recorder ------------------------------------------------------------------


def test_otlp_spans_leave_through_the_recorder_as_one_trace(make_gateway, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    gw = make_gateway(raw={"telemetry": {"traces": "otlp", "service_name": "gw-recorded"}})
    answer = client(gw).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    assert answer.choices[0].message.content

    def spans():
        found = []
        for path, headers, body in receiver.posts:
            assert path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                assert attrs(rs.resource.attributes)["service.name"] == "gw-recorded"
                found += [s for ss in rs.scope_spans for s in ss.spans]
        return found if len(found) >= 2 else None

    server, upstream = sorted(wait_for(spans, what="two spans"), key=lambda s: s.kind)
    assert server.name == "POST /v1/chat/completions" and server.kind == server.SPAN_KIND_SERVER
    assert server.trace_id.hex() == upstream.trace_id.hex() == TRACE_ID
    assert upstream.parent_span_id == server.span_id
    assert upstream.name == "chat gpt-4o-mini"
    upstream_attrs = attrs(upstream.attributes)
    assert upstream_attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert upstream_attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs(server.attributes)["http.response.status_code"] == 200

    def exported() -> float:
        text = httpx.get(gw.url + "/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith("safeguard_spans_exported"))
        return float(line.split()[-1])

    assert wait_for(lambda: exported() >= 2, what="the export counted in /metrics")


# -- the recorder's death ------------------------------------------------------------------------


def test_a_killed_recorder_means_spill_degraded_then_a_new_recorder(make_gateway, monkeypatch):
    monkeypatch.setattr(handle, "RESTART_AFTER_S", 1.0)
    gw = make_gateway()
    first = chat(gw, "gpt-4o-mini", "before")
    assert audit_records(gw, request_id=first.headers["x-request-id"])
    written = wait_for(lambda: gw.gateway.audit.stats()["written"], what="a status line")
    os.kill(gw.gateway.recorder._proc.pid, signal.SIGKILL)

    def readiness():
        return httpx.get(gw.url + "/readyz").json()

    down = wait_for(lambda: (r := readiness())["status"] == "not_ready" and r, what="not ready")
    assert "audit recorder exited with code -9" in down["checks"]["audit"]
    during = chat(gw, "gpt-4o-mini", "while it is down")
    spill = Path(gw.config.audit.path + ".spill.jsonl")
    during_id = during.headers["x-request-id"]
    wait_for(lambda: spill.exists() and during_id in spill.read_text(), what="the spilled record")
    up = wait_for(lambda: (r := readiness())["status"] == "ready" and r, what="ready again")
    # at least the one record: one stored just before the kill may be spilled too
    assert "records spilled" in up["checks"]["audit"]
    assert gw.gateway.audit.stats()["written"] >= written  # counters never go back
    after = chat(gw, "gpt-4o-mini", "after")
    assert audit_records(gw, request_id=after.headers["x-request-id"])
    # the new recorder replays what the gateway spilled while it was down
    assert audit_records(gw, request_id=during_id)


def test_a_stuck_recorder_makes_the_gateway_unready_until_it_moves(make_gateway, monkeypatch):
    monkeypatch.setattr(handle, "SILENT_AFTER_S", 0.5)
    gw = make_gateway()
    pid = gw.gateway.recorder._proc.pid

    def audit_check() -> tuple[int, str]:
        ready = httpx.get(gw.url + "/readyz")
        return ready.status_code, ready.json()["checks"]["audit"]

    assert audit_check()[0] == 200
    os.kill(pid, signal.SIGSTOP)
    try:
        _, detail = wait_for(lambda: (r := audit_check())[0] == 503 and r, what="unready")
        assert "has not reported" in detail
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: audit_check()[0] == 200, what="ready again")


async def test_a_recorder_too_far_behind_means_spill_at_the_gateway(tmp_path, monkeypatch):
    monkeypatch.setattr(handle, "MAX_BACKLOG", -1)  # every frame is over the limit
    config = parse_config(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path))
    rec = Recorder(config, audit=True, spans=False)
    await rec.start()
    rec.submit({"request_id": "r1", "tenant": "acme", "verdicts": [], "content": {}})
    await asyncio.sleep(3 * handle.FLUSH_S)
    assert rec.stats()["spilled"] == 1  # spilled here, not sent down the pipe
    # ...and the recorder, whose store is fine, replays it from the spill file
    deadline = time.monotonic() + 10
    while not Path(config.audit.path).exists() or not query(config.audit.path):
        assert time.monotonic() < deadline, "never replayed"
        await asyncio.sleep(0.05)
    assert [r["request_id"] for r in query(config.audit.path)] == ["r1"]
    await rec.close()


async def test_records_in_the_pipe_of_a_recorder_that_dies_are_spilled(tmp_path):
    config = parse_config(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path))
    rec = Recorder(config, audit=True, spans=False)
    await rec.start()
    pid = rec._proc.pid
    os.kill(pid, signal.SIGSTOP)  # alive, reading nothing
    try:
        for i in range(200):
            rec.submit({"request_id": f"r{i}", "tenant": "acme", "verdicts": [], "content": {}})
        await asyncio.sleep(5 * handle.FLUSH_S)  # shipped: in the pipe, not stored
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rec.health()[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    ok, detail = rec.health()
    assert not ok and "exited with code -9" in detail
    spill = Path(config.audit.path + ".spill.jsonl")
    spilled = [orjson.loads(line)["request_id"] for line in spill.read_bytes().splitlines()]
    assert spilled == [f"r{i}" for i in range(200)]
    assert rec.stats()["spilled"] == 200
    await rec.close()


async def test_spans_still_queued_for_a_recorder_that_dies_are_counted_dropped(tmp_path):
    config = parse_config(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path))
    rec = Recorder(config, audit=False, spans=True)
    await rec.start()
    pid = rec._proc.pid
    os.kill(pid, signal.SIGSTOP)  # alive, reading nothing: the pipe fills, the rest queues
    try:
        for i in range(300):
            span = Span("POST /v1/chat/completions", SERVER, i + 1, 0, False, "", {}, rec.add)
            span.set_attribute("big", "x" * 8000)  # 300 x 8 KB: more than the 1 MB pipe holds
            span.end()
            await asyncio.sleep(0)
        await asyncio.sleep(5 * handle.FLUSH_S)
        assert rec._frames  # some never reached the pipe
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rec._proc is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert 0 < rec.span_stats()["dropped"] <= 300
    await rec.close()


async def test_records_the_recorder_holds_unstored_are_spilled_when_it_dies(tmp_path):
    data = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path)
    data["audit"]["flush_interval_s"] = 30  # read by the recorder, not yet written
    rec = Recorder(parse_config(data), audit=True, spans=False)
    await rec.start()
    for i in range(50):
        rec.submit({"request_id": f"r{i}", "tenant": "acme", "verdicts": [], "content": {}})
    deadline = time.monotonic() + 10
    while rec.stats()["queued"] < 50 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(3 * 0.25)  # several status lines: none may release them
    assert rec.stats()["queued"] == 50 and rec.stats()["written"] == 0
    os.kill(rec._proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rec.health()[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    spill = Path(data["audit"]["path"] + ".spill.jsonl")
    spilled = [orjson.loads(line)["request_id"] for line in spill.read_bytes().splitlines()]
    assert spilled == [f"r{i}" for i in range(50)]
    await rec.close()


async def test_a_record_that_cannot_be_kept_does_not_take_its_batch_along(tmp_path, caplog):
    data = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path)
    data["audit"]["content"] = "hash"
    rec = Recorder(parse_config(data), audit=True, spans=False)
    await rec.start()
    rec.submit({"request_id": "r1", "verdicts": [], "content": {"input": "my secret plan"}})
    for _ in range(3):
        rec.submit({"request_id": "bad", "status": 2**70})  # beyond JSON's integers
    rec.submit({"request_id": "r2", "verdicts": [], "content": {}})
    await rec.close()
    stored = query(data["audit"]["path"], newest_first=False)
    assert [r["request_id"] for r in stored] == ["r1", "r2"]
    assert stored[0]["content"]["input"].startswith("sha256:")  # reduced before the pipe
    assert rec.stats()["rejected"] == 3 and rec.stats()["errors"] == 3  # as AuditLog counts them
    (logged,) = [r.message for r in caplog.records if "rejected" in r.message]  # one a batch
    assert logged.startswith("3 audit records rejected (TypeError")


def test_records_the_gateway_spills_itself_keep_the_retention_setting(tmp_path):
    data = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path)
    data["audit"]["content"] = "hash"
    rec = Recorder(parse_config(data), audit=True, spans=False)  # never started: spills here
    rec.submit({"request_id": "r1", "verdicts": [], "content": {"input": "my secret plan"}})
    text = Path(data["audit"]["path"] + ".spill.jsonl").read_text()
    assert "my secret plan" not in text
    assert orjson.loads(text)["content"]["input"].startswith("sha256:")


def test_records_the_gateway_cannot_spill_either_are_counted_dropped(tmp_path):
    (tmp_path / "blocker").write_text("a file where the spill file's directory should be")
    data = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path)
    data["audit"]["spill_path"] = str(tmp_path / "blocker" / "spill.jsonl")
    rec = Recorder(parse_config(data), audit=True, spans=False)  # never started: spills here
    rec.submit({"request_id": "r1", "verdicts": [], "content": {}})
    assert (rec.stats()["spilled"], rec.stats()["dropped"], rec.stats()["errors"]) == (0, 1, 1)


def test_records_for_a_recorder_never_started_are_spilled_not_kept(tmp_path):
    config = parse_config(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", tmp_path))
    rec = Recorder(config, audit=True, spans=False)
    rec.submit({"request_id": "r1", "tenant": "acme", "verdicts": [], "content": {}})
    spill = Path(config.audit.path + ".spill.jsonl")
    assert [orjson.loads(line)["request_id"] for line in spill.read_bytes().splitlines()] == ["r1"]
    assert rec.stats()["queued"] == 0


def test_an_unusable_otlp_setting_leaves_audit_working(make_gateway, monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing-ca.pem"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:9")
    gw = make_gateway(raw={"telemetry": {"traces": "otlp"}})
    assert httpx.get(gw.url + "/readyz").json()["checks"]["audit"].startswith("audit ok")
    answered = chat(gw, "gpt-4o-mini", "audited all the same")
    assert audit_records(gw, request_id=answered.headers["x-request-id"])
    assert gw.gateway.recorder._proc.poll() is None  # no crash loop


def test_the_recorder_leaves_with_the_gateway_even_a_killed_one(upstream, classifier, tmp_path):
    # the recorder's writer would wait 30 s: only the drain at its exit can write the record
    path = write_config_file(tmp_path, upstream, classifier, **{"audit.flush_interval_s": 30})
    proc, base = start_gateway_process(path)
    try:
        response = httpx.post(
            base + "/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200
        child = recorder_pid(proc.pid)
        time.sleep(10 * handle.FLUSH_S)  # the record is in the recorder's hands
        proc.kill()  # no shutdown at all: the recorder sees its pipe close
        proc.wait(timeout=10)
        wait_for(lambda: not Path(f"/proc/{child}").exists(), what="the recorder to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    from proxy.audit_store import query

    request_id = response.headers["x-request-id"]
    wait_for(lambda: query(str(tmp_path / "audit.db"), request_id=request_id), what="record")


def test_an_unopenable_audit_store_makes_the_gateway_unready(make_gateway, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spill = tmp_path / "spill.jsonl"
    gw = make_gateway(raw={"audit": {"path": str(blocker / "audit.db"), "spill_path": str(spill)}})
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503
    assert "cannot open audit store" in ready.json()["checks"]["audit"]
    answered = chat(gw, "gpt-4o-mini", "still answered")
    assert answered.status_code == 200
    request_id = answered.headers["x-request-id"]
    wait_for(lambda: spill.exists() and request_id in spill.read_text(), what="spill")
