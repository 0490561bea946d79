"""The reference forwarder: the least a Python proxy can do, to measure the gateway against.

An aiohttp web server whose one route, `POST /v1/chat/completions`, sends the body to
the upstream with one pooled aiohttp ClientSession and returns the answer (JSON whole,
SSE chunk by chunk). No auth, no routing, no parsing, no logging.
`--client httpx` forwards with an `httpx.AsyncClient()` with its default pool instead,
to show why the gateway's transport is aiohttp.

    python -m tests.bench.forwarder --upstream http://127.0.0.1:PORT [--client aiohttp|httpx]
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tests.bench.common import announce, prepare, server_args

PATH = "/v1/chat/completions"
JSON_HEADERS = {"content-type": "application/json"}


async def relay(
    request: web.Request,
    status: int,
    content_type: str | None,
    read: Callable[[], Awaitable[bytes]],
    chunks: AsyncIterator[bytes],
) -> web.StreamResponse:
    """The upstream's answer to the client: JSON whole, SSE chunk by chunk."""
    content_type = content_type or "application/json"
    headers = {"content-type": content_type}
    if not content_type.startswith("text/event-stream"):
        return web.Response(body=await read(), status=status, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def aiohttp_handler(upstream: str, path: str = PATH) -> tuple[Any, Any]:
    session: ClientSession | None = None

    async def forward(request: web.Request) -> web.StreamResponse:
        nonlocal session
        if session is None:
            session = ClientSession(
                connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None)
            )
        body = await request.read()
        async with session.post(upstream + path, data=body, headers=JSON_HEADERS) as answer:
            return await relay(
                request,
                answer.status,
                answer.headers.get("content-type"),
                answer.read,
                answer.content.iter_any(),
            )

    async def close() -> None:
        if session is not None:
            await session.close()

    return forward, close


def httpx_handler(upstream: str) -> tuple[Any, Any]:
    import httpx

    client = httpx.AsyncClient(timeout=None)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = client.build_request("POST", upstream + PATH, content=body, headers=JSON_HEADERS)
        answer = await client.send(req, stream=True)
        try:
            return await relay(
                request,
                answer.status_code,
                answer.headers.get("content-type"),
                answer.aread,
                answer.aiter_raw(),
            )
        finally:
            await answer.aclose()

    return forward, client.aclose


async def serve(sock: Any, upstream: str, client: str, path: str = PATH) -> None:
    if client == "httpx":
        forward, close = httpx_handler(upstream)
    else:
        forward, close = aiohttp_handler(upstream, path)
    app = web.Application()
    app.router.add_post(path, forward)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    announce(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await close()


def main() -> None:
    parser = server_args(__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="upstream origin, without /v1")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--path", default=PATH, help="the one route (aiohttp client only)")
    args = parser.parse_args()
    sock = prepare(args)
    uvloop.run(serve(sock, args.upstream.rstrip("/"), args.client, args.path))


if __name__ == "__main__":
    main()
