"""The audit spill file: records that could not be stored yet, as JSON lines.

Written by whichever process could not hand its records on (a worker whose recorder is
down, a recorder whose store fails or whose queue is full), and taken away whole by a
recorder that can store them again (`take`, then proxy.audit replays the lines). Every
write and every take holds an flock on the file, so processes sharing it never interleave
a line or lose one that lands while a take renames the file away.
"""

from __future__ import annotations

import fcntl
import glob
import os
import threading
import time
from pathlib import Path
from typing import IO

from proxy.audit_store import RECORD, Row
from proxy.config import Audit


def spill_path(cfg: Audit) -> str:
    return cfg.spill_path or f"{cfg.path}.spill.jsonl"


class SpillFile:
    """Rows' records as JSON lines appended to the spill file (any thread, any process).

    Every write opens, locks (flock), appends and closes: spills are rare, and several
    processes (each worker and its recorder) share the file while a recorder may be taking
    it away to replay (`take`). `write` raises OSError when they cannot be kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, rows: list[Row]) -> None:
        self.write_lines([row[RECORD] for row in rows])

    def write_lines(self, lines: list[str]) -> None:
        data = "".join([f"{line}\n" for line in lines]).encode()
        with self._lock:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            while True:
                with open(self.path, "ab") as file:
                    fcntl.flock(file, fcntl.LOCK_EX)
                    if same_file(file, self.path):  # not taken away while we waited
                        file.write(data)
                        file.flush()
                        return

    def take(self) -> list[str]:
        """Move the spilled lines aside for replay: the paths of the files to replay
        (this one, and any a replay left behind when it was interrupted)."""
        taken = sorted(glob.glob(glob.escape(self.path) + ".replay-*"))
        with self._lock:
            try:
                with open(self.path, "rb") as file:
                    fcntl.flock(file, fcntl.LOCK_EX)
                    if same_file(file, self.path) and os.fstat(file.fileno()).st_size:
                        aside = f"{self.path}.replay-{os.getpid()}-{time.time_ns()}"
                        os.rename(self.path, aside)
                        taken.append(aside)
            except FileNotFoundError:
                pass
        return taken

    def pending(self) -> bool:
        """Anything to replay (one stat a call, or a glob when a replay was interrupted)."""
        try:
            if os.stat(self.path).st_size:
                return True
        except OSError:
            pass
        return bool(glob.glob(glob.escape(self.path) + ".replay-*"))

    def close(self) -> None:
        """Nothing is kept open (kept for the callers that close it)."""


def same_file(file: IO[bytes], path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
