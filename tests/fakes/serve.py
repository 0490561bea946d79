"""Run an ASGI app on 127.0.0.1 (free port) in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass
class ServerHandle:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(app: Any, *, lifespan: str = "auto", **options: Any) -> ServerHandle:
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)

    thread = threading.Thread(target=server.run, args=([sock],), daemon=True, name=f"server:{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.01)
    return ServerHandle(f"http://127.0.0.1:{port}", port, server, thread)
