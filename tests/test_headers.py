"""Request headers: a head over `server.max_header_bytes` is 431 without stalling anyone
else, and only an allowlist of client headers reaches the upstream."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from proxy.config import ConfigError, parse_config
from tests.conftest import KEY, UPSTREAM_KEY, start_gateway_process, write_config_file

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def raw_exchange(url: str, head: bytes, timeout: float = 5) -> bytes:
    """Send a request head as is and read the answer (b"" when the server reset us)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            return b""
        return b"".join(chunks)


def head(extra: bytes, path: bytes = b"/v1/models") -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nConnection: close\r\n"
        + extra
        + b"\r\n"
    )


@pytest.fixture
def gateway_process(tmp_path, upstream, classifier):
    config = write_config_file(tmp_path, upstream, classifier)
    proc, url = start_gateway_process(config)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_a_header_block_over_the_limit_is_431_in_the_openai_shape(gateway_process, upstream):
    answer = raw_exchange(gateway_process, head(b"X-Big: " + b"a" * 100_000 + b"\r\n"))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431"), answer[:200]
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_header_fields_too_large"
    assert upstream[0].requests == []
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))  # 100 KB in small
    assert raw_exchange(gateway_process, head(many)).startswith(b"HTTP/1.1 431")
    long_url = b"/v1/models/" + b"m" * 100_000
    assert raw_exchange(gateway_process, head(b"", long_url)).startswith(b"HTTP/1.1 431")
    under = raw_exchange(gateway_process, head(b"X-Fine: " + b"a" * 50_000 + b"\r\n"))
    assert under.startswith(b"HTTP/1.1 200")


def test_a_huge_header_block_does_not_stall_other_requests(gateway_process):
    outcome: dict[str, bytes] = {}

    def attacker() -> None:
        start = head(b"")[:-2] + b"X-Huge: "
        outcome["answer"] = raw_exchange(
            gateway_process, start + b"a" * (64 << 20) + b"\r\n\r\n", timeout=30
        )

    thread = threading.Thread(target=attacker)
    thread.start()
    worst = 0.0
    deadline = time.monotonic() + 3
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline and (thread.is_alive() or worst == 0.0):
            began = time.monotonic()
            assert client.get(gateway_process + "/healthz").status_code == 200
            worst = max(worst, time.monotonic() - began)
            time.sleep(0.005)
    thread.join(timeout=30)
    assert worst < 1.0, f"a small request waited {worst:.2f} s behind a huge header"
    # the attacker is answered 431 or cut off, never served
    assert outcome["answer"] == b"" or outcome["answer"].startswith(b"HTTP/1.1 431")


def test_the_header_limit_is_configurable(make_gateway):
    gw = make_gateway(raw={"server": {"max_header_bytes": 4096}})
    answer = raw_exchange(gw.url, head(b"X-Big: " + b"a" * 5000 + b"\r\n"))
    assert answer.startswith(b"HTTP/1.1 431")
    with pytest.raises(ConfigError, match=r"server\.max_header_bytes"):
        parse_config({**minimal_config(), "server": {"max_header_bytes": 10}})


def minimal_config() -> dict:
    return {
        "upstreams": {"main": {"base_url": "http://127.0.0.1:1/v1"}},
        "tenants": {"t": {"keys": ["k" * 20], "route": "r"}},
        "routes": {"r": {"upstream": "main"}},
    }


# -- what the upstream sees ------------------------------------------------------------------

CLIENT_SECRETS = {
    "OpenAI-Organization": "org-tenant-picked",
    "OpenAI-Project": "proj_tenant",
    "x-api-key": "sk-tenant-other",
    "Cookie": "session=abc",
    "Idempotency-Key": "same-for-everyone",
    "X-Custom-Thing": "internal",
    "Forwarded": "for=10.0.0.1",
    "X-Forwarded-For": "10.0.0.1",
    "api-key": "ignored-because-bearer-wins",
}


def test_only_allowlisted_client_headers_reach_the_upstream(gateway, upstream):
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=KEY,
        max_retries=0,
        default_headers={
            **CLIENT_SECRETS,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "OpenAI-Beta": "responses=v1",
            "X-Client-Request-Id": "my-id-1",
        },
    )
    client.chat.completions.create(**CHAT)
    client.models.list()
    for received in upstream[0].requests:
        sent = received.headers
        for name in CLIENT_SECRETS:
            assert name.lower() not in sent, name
        assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert sent["openai-beta"] == "responses=v1"
        assert sent["x-client-request-id"] == "my-id-1"
        assert sent["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
        assert sent["user-agent"].startswith("OpenAI/Python")
        assert "x-stainless-lang" in sent
    assert upstream[0].requests[0].headers["content-type"] == "application/json"


def test_a_route_opts_headers_in(make_gateway, upstream):
    gw = make_gateway(
        org={"upstream": "main", "forward_headers": ["OpenAI-Organization", "OpenAI-Project"]}
    )
    client = openai.OpenAI(
        base_url=gw.base_url, api_key=KEY, max_retries=0, default_headers=CLIENT_SECRETS
    )
    client.chat.completions.create(**{**CHAT, "model": "org-1"})
    client.chat.completions.create(**CHAT)  # the open route opts nothing in
    opted, plain = (r.headers for r in upstream[0].requests)
    assert opted["openai-organization"] == "org-tenant-picked"
    assert opted["openai-project"] == "proj_tenant"
    assert "cookie" not in opted and "x-api-key" not in opted
    assert "openai-organization" not in plain


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "api-key", "Content-Length"])
def test_a_route_cannot_opt_in_the_gateway_key_or_framing(name):
    data = minimal_config()
    data["routes"]["r"]["forward_headers"] = [name]
    with pytest.raises(ConfigError, match=r"routes\.r\.forward_headers"):
        parse_config(data)


# What real upstreams send beside the answer: ids and limits the SDKs read, and account
# and infrastructure headers no tenant should see.
UPSTREAM_HEADERS = {
    "request-id": "req_upstream_9",
    "x-request-id": "upstream-own-id",
    "x-ratelimit-remaining-requests": "499",
    "anthropic-ratelimit-requests-remaining": "49",
    "openai-processing-ms": "12",
    "retry-after": "3",
    "anthropic-organization-id": "org-gateway-account",
    "openai-organization": "org-gateway-account",
    "openai-project": "proj_gateway",
    "x-envoy-upstream-service-time": "11",
    "x-internal-account": "acct-7",
    "server": "upstream/1.0",
    "set-cookie": "__cf_bm=abc; path=/",
    "cf-ray": "8a1b2c3d4e5f-SJC",
}
LEAKS = (
    "anthropic-organization-id",
    "openai-organization",
    "openai-project",
    "x-envoy-upstream-service-time",
    "x-internal-account",
    "set-cookie",
    "cf-ray",
)


def _account_upstream():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
    }
    chunk = {k: v for k, v in chat.items() if k != "choices"} | {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}],
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }

    async def completions(request: Request) -> Response:
        if (await request.json()).get("stream"):
            body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
            return Response(body, media_type="text/event-stream", headers=UPSTREAM_HEADERS)
        return Response(orjson.dumps(chat), media_type="application/json", headers=UPSTREAM_HEADERS)

    async def messages(request: Request) -> Response:
        body = orjson.dumps(message)
        return Response(body, media_type="application/json", headers=UPSTREAM_HEADERS)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
        ]
    )


def test_upstream_account_headers_never_reach_the_client_but_ids_and_limits_do(make_gateway):
    import anthropic

    from tests.fakes.serve import serve

    server = serve(_account_upstream())
    try:
        gw = make_gateway(
            raw={
                "upstreams": {
                    "acct": {"base_url": server.url + "/v1", "api_key": "sk-up"},
                    "claude": {
                        "base_url": server.url + "/v1",
                        "api_key": "sk-up",
                        "api": "anthropic",
                    },
                }
            },
            acct={"upstream": "acct"},
            claude={"upstream": "claude"},
        )
        client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        request = {"model": "acct-1", "messages": [{"role": "user", "content": "hi"}]}
        plain = client.chat.completions.with_raw_response.create(**request)
        with client.chat.completions.with_streaming_response.create(
            **request, stream=True
        ) as streamed:
            assert "".join(streamed.iter_text()).endswith("[DONE]\n\n")
        claude = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
        message = claude.messages.with_raw_response.create(
            model="claude-1", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.parse()._request_id == "req_upstream_9"
        for response in (plain, streamed, message):
            headers = response.headers
            for name in LEAKS:
                assert name not in headers, name
            assert headers["request-id"] == "req_upstream_9"
            assert headers["x-ratelimit-remaining-requests"] == "499"
            assert headers["anthropic-ratelimit-requests-remaining"] == "49"
            assert headers["openai-processing-ms"] == "12"
            assert headers["retry-after"] == "3"
            assert headers["x-request-id"] != "upstream-own-id"  # the gateway's own
            assert headers.get("server") != "upstream/1.0"
    finally:
        server.stop()
