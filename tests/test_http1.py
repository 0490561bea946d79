"""The classifier's HTTP/1.1 wire against real loopback servers answering by hand."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.guard.http1 import Origin
from proxy.guard.safeguard import ClassifierError, SafeguardClient
from proxy.policies import parse_policy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = (
    b'{"choices":[{"message":{"role":"assistant","content":"{\\"violation\\":1}"},'
    b'"finish_reason":"stop"}]}'
)
POLICY = parse_policy(b"---\nid: p\naction: block\n---\n## INSTRUCTIONS\nx\n", name="p")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", connections
    finally:
        server.close()


def keep_alive(body: bytes, extra: bytes = b"") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%scontent-length: %d"
                b"\r\n\r\n%s" % (extra, len(body), body)
            )
            await writer.drain()

    return handler


async def test_a_chunked_gzipped_answer_is_read_whole() -> None:
    packed = gzip.compress(ANSWER)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        halves = (packed[:10], packed[10:])
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(h), h) for h in halves)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async for url, _ in serve(handler):
        client = SafeguardClient(url, "m")
        verdict = await client.classify(POLICY, "content")
        await client.aclose()
        assert verdict.violation is True


async def test_an_answer_without_length_runs_to_the_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + ANSWER)
        await writer.drain()

    async for url, _ in serve(handler):
        origin = Origin(url, {})
        assert await origin.request("POST", "/chat/completions", b"{}", 2) == (200, ANSWER)
        origin.close()


async def test_requests_share_one_kept_alive_connection_and_the_limit_holds() -> None:
    async for url, connections in serve(keep_alive(ANSWER)):
        origin = Origin(url, {}, limit=1)
        for _ in range(3):
            await origin.request("POST", "/chat/completions", b"{}", 2)
        answers = await asyncio.gather(
            *(origin.request("POST", "/chat/completions", b"{}", 2) for _ in range(4))
        )
        origin.close()
        assert answers == [(200, ANSWER)] * 4
        assert len(connections) == 1


async def test_a_connection_closed_while_idle_is_replaced_without_an_error() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        await writer.drain()  # ... then closes, as a server's keep-alive timeout does

    async for url, connections in serve(once):
        origin = Origin(url, {})
        await origin.request("POST", "/chat/completions", b"{}", 2)
        await asyncio.sleep(0.05)
        assert await origin.request("POST", "/chat/completions", b"{}", 2) == (200, ANSWER)
        origin.close()
        assert len(connections) == 2


async def test_a_stalled_classifier_times_out_at_its_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async for url, _ in serve(stall):
        client = SafeguardClient(url, "m", timeout_s=0.3)
        started = time.perf_counter()
        with pytest.raises(ClassifierError) as caught:
            await client.classify(POLICY, "content")
        await client.aclose()
        assert caught.value.kind == "timeout"
        assert 0.25 <= time.perf_counter() - started < 2


async def test_a_refused_or_garbled_classifier_is_unreachable() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-not-http\r\n\r\n")
        await writer.drain()
        await reader.read()

    async for url, _ in serve(garbage):
        client = SafeguardClient(url, "m")
        with pytest.raises(ClassifierError) as caught:
            await client.classify(POLICY, "content")
        await client.aclose()
        assert caught.value.kind == "unreachable"
    refused = SafeguardClient("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ClassifierError) as caught:
        await refused.classify(POLICY, "content")
    assert caught.value.kind == "unreachable"
    assert await refused.ready() == (False, "unreachable (ConnectionRefusedError)")


async def test_the_request_names_its_host_path_and_key() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        await writer.drain()

    async for url, _ in serve(record):
        client = SafeguardClient(url + "/", "m", api_key="sk-x")
        await client.classify(POLICY, "content")
        await client.aclose()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"authorization: Bearer sk-x" in lines
    assert b"content-type: application/json" in lines
    assert any(line.startswith(b"host: 127.0.0.1:") for line in lines)
    assert body == client.request_body(POLICY, "content")


def _gzip_bomb(decoded: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 16 + 15: a gzip member
    zeros = b"\0" * (1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(decoded >> 20)) + packer.flush()


async def test_a_gzip_bomb_from_the_classifier_is_refused_within_the_bound() -> None:
    bomb = _gzip_bomb(64 << 20)  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 1 << 18

    async for url, _ in serve(keep_alive(bomb, b"content-encoding: gzip\r\n")):
        client = SafeguardClient(url, "m")
        with pytest.raises(ClassifierError) as caught:
            await client.classify(POLICY, "content")
        await client.aclose()
        assert caught.value.kind == "unreachable"
        assert "once decoded" in caught.value.detail
        origin = Origin(url, {}, max_answer=len(bomb) - 1)  # the bound holds as sent, too
        with pytest.raises(ConnectionError, match="answer over"):
            await origin.request("POST", "/chat/completions", b"{}", 5)
        origin.close()
        small = Origin(url, {}, max_answer=65 << 20)  # within a larger bound it decodes
        status, body = await small.request("POST", "/chat/completions", b"{}", 20)
        small.close()
        assert status == 200 and len(body) == 64 << 20
