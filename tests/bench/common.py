"""What every benchmark process shares: loopback sockets, limits, and a bounded lifetime.

Each server binds 127.0.0.1 on a free port itself and announces it as `PORT <n>` on its
first stdout line; the orchestrator reads that line. A server dies with its parent
(PR_SET_PDEATHSIG) and in any case after `--lifetime-s`, so nothing outlives a run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import signal
import socket
import threading
from typing import Any

HOST = "127.0.0.1"
DEFAULT_LIFETIME_S = 900.0


def raise_fd_limit() -> None:
    """1,000 open streams need ~2,000 descriptors in the gateway; lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the orchestrator goes away."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def limit_lifetime(seconds: float) -> None:
    """Hard stop: whatever happens, this process ends after `seconds`."""
    timer = threading.Timer(seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def server_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (announced)")
    parser.add_argument("--lifetime-s", type=float, default=DEFAULT_LIFETIME_S)
    return parser


def prepare(args: argparse.Namespace) -> socket.socket:
    """Common start of every server process: limits, watchdogs, the bound socket."""
    raise_fd_limit()
    die_with_parent()
    limit_lifetime(args.lifetime_s)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    return sock


def announce(sock: socket.socket) -> None:
    print(f"PORT {sock.getsockname()[1]}", flush=True)


def run_asgi(app: Any, sock: socket.socket, *, lifespan: str = "off", **options: Any) -> None:
    """Serve an ASGI app the way the gateway is served: uvicorn, uvloop, httptools."""
    import uvicorn

    settings: dict[str, Any] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": lifespan,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "backlog": 4096,
    }
    config = uvicorn.Config(app, **(settings | options))
    announce(sock)
    uvicorn.Server(config).run(sockets=[sock])


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_bytes(
    send: Any, body: bytes, content_type: bytes = b"application/json", status: int = 200
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
