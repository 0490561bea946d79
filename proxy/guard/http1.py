"""A keep-alive HTTP/1.1 client for one origin: the classifier's wire, nothing more.

Why not aiohttp here (the upstream seam keeps it): a classifier call is a small POST and
a small JSON answer, made 4-6 times per guarded streamed answer. Counted by valgrind on
this machine, one call through `aiohttp.ClientSession.post` + `read()` costs ~375,000
instructions of gateway CPU, the same call through this module ~81,000 (httptools, the
C parser uvicorn serves with, reads the answer): ~12% of a guarded 100-token stream.
It does what the classifier needs: http and https, a bounded pool of kept-alive
connections, Content-Length or chunked answers (or read to close), gzip/deflate, one
retry when a reused connection turns out closed, and a total deadline per request.
An answer is bounded (`max_answer` bytes, 8 MiB: a verdict with its reasoning is a few
KiB) as sent and once decoded, so a runaway or hostile server (a gzip bomb) costs at most
that much memory. Errors are TimeoutError (deadline) or ConnectionError (anything else on
the wire, an answer over the bound included).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from urllib.parse import urlsplit

import httptools

MAX_ANSWER = 8 << 20  # bytes of an answer, as sent and as decoded


class _Conn(asyncio.Protocol):
    """One connection; at most one request in flight on it."""

    def __init__(self, max_answer: int = MAX_ANSWER) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.max_answer = max_answer
        self.body: list[bytes] = []
        self.size = 0
        self.received = False  # any byte of the current answer
        self.headers_done = False
        self.sized = False  # Content-Length or chunked: the parser knows where it ends
        self.encoding = b""
        self.used = False  # served an answer before: may have been closed while idle
        self.reusable = False  # the last answer leaves the connection open (HTTP/1.1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed answer: {exc}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self.sized = True
        elif name == b"content-encoding":
            self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_answer:
            self._fail(ConnectionError(f"answer over {self.max_answer} bytes"))
            self.close()  # what else it sends is not read
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self._done()

    def _done(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        if waiter is None or waiter.done():
            return
        if self.encoding in (b"gzip", b"deflate"):
            try:
                body = _decoded(body, self.max_answer)
            except ConnectionError as exc:
                waiter.set_exception(exc)
                return
        waiter.set_result((self.parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and self.headers_done and not self.sized:
            self._done()  # an answer that runs to the connection's close
        else:
            self._fail(ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        self.waiter, self.body, self.received, self.size = waiter, [], False, 0
        self.headers_done = self.sized = self.reusable = False
        self.encoding = b""
        self.transport.write(data)  # type: ignore[union-attr]

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _decoded(body: bytes, limit: int) -> bytes:
    """A gzip or zlib body decoded, at most `limit` bytes of it (ConnectionError past)."""
    decoder = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ConnectionError(f"undecodable answer: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise ConnectionError(f"answer over {limit} bytes once decoded")
    if not decoder.eof:
        raise ConnectionError("undecodable answer: truncated")
    return out


def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Origin:
    """Requests to one scheme://host:port, over at most `limit` kept-alive connections."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        limit: int = 256,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        parts = urlsplit(base_url)
        self._invalid = parts.scheme not in ("http", "https") or not parts.hostname
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        authority = parts.netloc.rpartition("@")[2]
        lines = [f"host: {authority}", *(f"{k}: {v}" for k, v in headers.items())]
        self._headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._limit = max(1, limit)
        self._max_answer = max_answer
        self._idle: list[_Conn] = []
        self._count = 0  # open connections, idle or busy
        self._slots: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self, method: str, path: str, body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        """(status, body) of one request to `base_url + path`, within `timeout` seconds."""
        if self._invalid:
            raise ConnectionError(f"not an http(s) URL: {self.host or self.path!r}")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self._reset(loop)
        deadline = loop.time() + timeout
        head = b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n" % (
            method.encode(),
            (self.path + path).encode(),
            self._headers,
            len(body),
        )
        data = head + body
        for _ in range(2):
            conn = await self._acquire(loop, deadline)
            reused = conn.used
            waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn.send(data, waiter)
                answer = await waiter
            except ConnectionError:
                self._release(conn, keep=False)
                if reused and not conn.received:
                    continue  # closed while idle: once more on a fresh connection
                raise
            except BaseException:
                self._release(conn, keep=False)  # an answer may still come: unusable
                raise
            finally:
                timer.cancel()
            conn.used = True
            self._release(conn, keep=conn.reusable)
            return answer
        raise ConnectionError("the server closed the connection")  # pragma: no cover

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.open:
                return conn
            self._count -= 1
        while self._count >= self._limit:
            slot: asyncio.Future[None] = loop.create_future()
            self._slots.append(slot)
            await asyncio.wait_for(slot, max(0.0, deadline - loop.time()))
            if self._idle:
                return await self._acquire(loop, deadline)
        self._count += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(self._max_answer), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                max(0.0, deadline - loop.time()),
            )  # fmt: skip
        except BaseException:
            self._count -= 1
            self._wake()
            raise
        return conn

    def _release(self, conn: _Conn, *, keep: bool) -> None:
        if keep and conn.open:
            self._idle.append(conn)
        else:
            conn.close()
            self._count = max(0, self._count - 1)  # a loop change reset it meanwhile
        self._wake()

    def _wake(self) -> None:
        while self._slots:
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self.close()
        self._loop = loop

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._count = 0
        self._slots.clear()
