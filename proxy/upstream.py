"""The upstream seam: one pooled aiohttp session per configured upstream.

aiohttp rather than httpx: on this kind of machine httpx's pool forwards ~1/8 of what a
minimal aiohttp forwarder does at 32 concurrent requests (encode/httpx#3215), and even
httpx over an aiohttp transport halves it. Every aiohttp error is mapped here, once, to
UpstreamError (502 unreachable/dropped, 504 timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping

import aiohttp
from multidict import CIMultiDict

from proxy import config
from proxy.anthropic_api import DEFAULT_VERSION

# The client headers sent upstream: what describes the body and the client, and trace
# context. Everything else stays here: credentials (the gateway key in authorization,
# api-key, x-api-key), account selectors (OpenAI-Organization, OpenAI-Project: a tenant
# must not pick the gateway key's organization), cookies, Idempotency-Key (two tenants on
# one upstream key could replay each other's answers), hop-by-hop and framing headers
# (the body may be re-encoded or was decompressed). A route opts more in with
# `forward_headers`; an endpoint with `Endpoint.headers`.
FORWARDED_REQUEST_HEADERS = frozenset(
    (
        "content-type",
        "accept",
        "user-agent",
        "traceparent",
        "tracestate",
        "openai-beta",
        "x-client-request-id",
        "anthropic-version",  # API version selectors of the Messages API, not credentials
        "anthropic-beta",
    )
)
_SDK_PREFIX = "x-stainless-"  # the official SDKs' client description (lang, version, retry)
# The upstream's response headers passed back to the client: an allowlist too. What the
# SDKs read (content type, request ids, rate limits and retry hints, processing time) and
# the MCP transport's own (proxy.mcp.relay narrows them to its list). Everything else stays
# here: account identifiers (anthropic-organization-id, openai-organization,
# openai-project: they tell a tenant whose upstream account serves it), cookies, the
# upstream's infrastructure headers (server, via, cf-ray, x-envoy-*, ...), hop-by-hop and
# framing headers (the body may be re-encoded), and the upstream's x-request-id (the
# gateway's own replaces it).
RETURNED_RESPONSE_HEADERS = frozenset(
    (
        b"content-type",
        b"cache-control",
        b"request-id",  # Anthropic's request id (the SDKs' `_request_id`)
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",  # the SDKs' retry override
        b"openai-processing-ms",
        b"openai-version",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"allow",
    )
)
RETURNED_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")


class UpstreamError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class UpstreamResponse:
    """A response whose body has not been read yet: read it whole or chunk by chunk."""

    def __init__(self, response: aiohttp.ClientResponse, name: str) -> None:
        self._response = response
        self._name = name
        self.status = response.status
        self.headers: list[tuple[bytes, bytes]] = [
            (name, v)
            for k, v in response.raw_headers
            if (name := k.lower()) in RETURNED_RESPONSE_HEADERS
            or name.startswith(RETURNED_PREFIXES)
        ]
        self.content_type = response.headers.get("content-type", "")
        self.upstream_request_id = response.headers.get("x-request-id")

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except BaseException as exc:
            raise _mapped(exc, self._name) from None
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _mapped(exc, self._name) from None
        finally:
            self._response.release()

    def close(self) -> None:
        self._response.close()


def _mapped(exc: BaseException, name: str) -> BaseException:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, "upstream_timeout", f"Upstream {name!r} did not answer in time.")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return UpstreamError(
            502,
            "upstream_unavailable",
            f"Upstream {name!r} is unreachable or dropped the connection.",
        )
    return exc


def auth_headers(upstream: config.Upstream) -> dict[str, str]:
    """The upstream's own credentials, in the header its API reads them from (and the
    Messages API's required `anthropic-version`)."""
    if upstream.api == "anthropic":
        version = {"anthropic-version": DEFAULT_VERSION}
        return {"x-api-key": upstream.api_key, **version} if upstream.api_key else version
    return {"authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}


class UpstreamPool:
    def __init__(self, upstreams: Mapping[str, config.Upstream]) -> None:
        self._upstreams = upstreams
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, upstream: config.Upstream) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream.name)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=upstream.connect_timeout_s, sock_read=upstream.timeout_s
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
            self._sessions[upstream.name] = session
        return session

    @staticmethod
    def request_headers(
        upstream: config.Upstream,
        client_headers: Iterable[tuple[bytes, bytes]],
        extra: Mapping[str, str],
        forward: frozenset[str] = frozenset(),
    ) -> CIMultiDict[str]:
        """The allowlisted client headers (plus `forward`), then the upstream's own."""
        headers: CIMultiDict[str] = CIMultiDict()
        allowed = FORWARDED_REQUEST_HEADERS | forward if forward else FORWARDED_REQUEST_HEADERS
        for raw_name, raw_value in client_headers:
            name = raw_name.decode("latin-1").lower()
            if name in allowed or name.startswith(_SDK_PREFIX):
                headers.add(name, raw_value.decode("latin-1"))
        for name, value in upstream.headers.items():
            headers[name] = value
        for name, value in extra.items():
            headers[name] = value
        for name, value in auth_headers(upstream).items():
            if name != "anthropic-version" or name not in headers:  # the client's version wins
                headers[name] = value
        return headers

    async def send(
        self,
        upstream: config.Upstream,
        method: str,
        path: str,
        body: bytes | None,
        client_headers: Iterable[tuple[bytes, bytes]],
        extra_headers: Mapping[str, str],
        forward: frozenset[str] = frozenset(),
    ) -> UpstreamResponse:
        """Send and return once the status line and headers are in; the body is left unread.

        `path` is relative to the OpenAI API root (e.g. "/chat/completions"), already
        encoded (proxy.endpoints builds it from its table, never from the client's path).
        """
        url = upstream.base_url + path  # plain, so yarl's quoting leaves it as it is
        headers = self.request_headers(upstream, client_headers, extra_headers, forward)
        try:
            response = await self._session(upstream).request(
                method, url, data=body, headers=headers
            )
        except BaseException as exc:
            raise _mapped(exc, upstream.name) from None
        return UpstreamResponse(response, upstream.name)

    async def ready(self) -> dict[str, str]:
        """Per upstream: "ok" when it answers HTTP at all (any status), else why not."""

        async def probe(upstream: config.Upstream) -> str:
            try:
                async with self._session(upstream).get(
                    upstream.base_url + "/models",
                    headers=auth_headers(upstream),
                    timeout=aiohttp.ClientTimeout(total=2),
                ):
                    return "ok"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return f"unreachable ({type(exc).__name__})"

        names = list(self._upstreams)
        results = await asyncio.gather(*(probe(self._upstreams[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
