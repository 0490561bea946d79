"""Throwaway PostgreSQL and Redis/Valkey servers on loopback, in temp dirs, for the tests.

Real servers (Debian's `postgresql` and `redis-server` or `valkey-server` packages; `.ci/run`
installs them). A test using them skips only when the binaries are absent. initdb refuses
to run as root, so as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.serve import free_socket


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


@dataclass
class Postgres:
    port: int
    data: Path
    run: Callable[..., subprocess.CompletedProcess]
    pg_ctl: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self.run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        """Stop it (whatever state it is in) and remove its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.data.parent, ignore_errors=True)

    def start(self) -> None:
        self.run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.data / "log"), "-w", "-t", "30",
            "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off",
            "start",
        )  # fmt: skip


def start_postgres() -> Postgres:
    """A new cluster in a temp dir, started on a free loopback port (stop with `close`).
    Raises FileNotFoundError when the PostgreSQL binaries are not installed."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise FileNotFoundError("PostgreSQL binaries (Debian package postgresql) not installed")
    root = Path(tempfile.mkdtemp(prefix="sg-pg-"))
    data = root / "data"
    as_postgres = os.geteuid() == 0
    if as_postgres:
        shutil.chown(root, "postgres")
        root.chmod(0o755)

    def run(*argv: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        return subprocess.run(
            [*prefix, *argv], check=True, capture_output=True, text=True, cwd=root
        )

    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    server = Postgres(_port(), data, run, pg_ctl)
    server.start()
    return server


def _running(start: Callable[[], Any]) -> Iterator[Any]:
    """A fixture's server: skipped when its binaries are not installed, closed after."""
    try:
        server = start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    yield from _running(start_postgres)


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen
    folder: str

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis() -> Redis:
    """valkey-server (or redis-server) on a free loopback port, no persistence.
    Raises FileNotFoundError when neither is installed."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if not binary:
        raise FileNotFoundError("neither valkey-server nor redis-server is installed")
    folder = tempfile.mkdtemp(prefix="sg-redis-")
    port = _port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", folder, "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise
                time.sleep(0.05)
    finally:
        client.close()
    return Redis(port, proc, folder)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    yield from _running(start_redis)
