"""Only the OpenAI endpoints the gateway serves reach the upstream, by method + path table.

The attack: `GET /v1/models/%2e%2e/files/file-abc/content` with a tenant key used to reach
the upstream as `GET /v1/files/file-abc/content` with the gateway's own upstream key.
Requests here go out byte for byte (http.client does not normalize paths) so every
encoded form reaches the gateway as an attacker would send it.
"""

from __future__ import annotations

import http.client
from urllib.parse import unquote, urlsplit

import openai
import orjson
import pytest

from proxy.endpoints import FORWARD, GENERATE, Endpoint, Table
from proxy.openai_api import OpenAIError
from tests.conftest import KEY, UPSTREAM_KEY

CHAT_BODY = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})

# Each one is a way to name some other upstream path (or a non-canonical spelling).
ESCAPES = [
    "/v1/models/%2e%2e/files/file-abc/content",
    "/v1/models/%2E%2E/files/file-abc/content",
    "/v1/models/%2e%2E/files/file-abc/content",
    "/v1/models/.%2e/files/file-abc/content",
    "/v1/models/..%2ffiles%2ffile-abc%2fcontent",
    "/v1/models/..%2Ffiles%2Ffile-abc%2Fcontent",
    "/v1/models/%2e%2e%2ffiles%2ffile-abc%2fcontent",
    "/v1/models/..%5cfiles%5cfile-abc%5ccontent",
    "/v1/models/..%5Cfiles",
    "/v1/models/%252e%252e/files/file-abc/content",
    "/v1/models/%252e%252e%252ffiles",
    "/v1/models/../files/file-abc/content",
    "/v1/models/..\\files\\file-abc\\content",
    "/v1/models/..",
    "/v1/models/.",
    "/v1/models/%2e",
    "/v1/models/./gpt-4o-mini",
    "/v1/./models",
    "/v1//models",
    "/v1/models//gpt-4o-mini",
    "/v1/models/gpt-4o-mini/",
    "/v1/models/",
    "/v1/models/gpt-4o-mini/files",
    "/v1/models/gpt-4o-mini%2f..%2f..%2ffiles",
    "/v1/models/gpt-4o-mini%00",
    "/v1/models/%67pt-4o-mini",
    "/v1/models\\gpt-4o-mini",
    "/v1/files/file-abc/content",
    "/v1/files",
    "/v1/batches",
    "/v1/responses/resp_abc",
    "/v1/chat/completions/chatcmpl-abc",
]
POST_ESCAPES = [
    "/v1/chat/completions/",
    "/v1/chat//completions",
    "/v1/chat/completions%2f",
    "/v1/chat/completions/..",
    "/v1/chat/completions/../../files",
    "/v1/chat/%63ompletions",
    "/v1/chat/completions;x",
    "/v1/embeddings/",
    "/v1/responses/resp_abc/cancel",
    "/v1/files",
    "/v1/fine_tuning/jobs",
]


def send(gw, method: str, target: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    """One request with exactly this request target; (status, headers, JSON body)."""
    parts = urlsplit(gw.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), orjson.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("target", ESCAPES)
def test_no_spelling_of_another_path_reaches_the_upstream(gateway, upstream, target):
    status, headers, body = send(gateway, "GET", target)
    assert status == 404, (target, body)
    assert body["error"]["code"] == "unknown_url"
    assert body["error"]["type"] == "invalid_request_error"
    assert headers["x-request-id"].startswith("req_")
    assert upstream[0].requests == []


@pytest.mark.parametrize("target", POST_ESCAPES)
def test_no_spelling_of_a_generation_path_reaches_the_upstream(gateway, upstream, target):
    status, _, body = send(gateway, "POST", target, CHAT_BODY)
    assert status == 404, (target, body)
    assert body["error"]["code"] == "unknown_url"
    assert upstream[0].requests == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/embeddings"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc"),
        ("POST", "/v1/models/gpt-4o-mini"),
    ],
)
def test_a_wrong_method_on_a_served_path_is_405(gateway, upstream, method, target):
    status, headers, body = send(gateway, method, target, CHAT_BODY if method != "GET" else None)
    assert status == 405
    assert body["error"]["code"] == "method_not_allowed"
    assert {k.lower(): v for k, v in headers.items()}["allow"] == (
        "GET" if target.startswith("/v1/models") else "POST"
    )
    assert upstream[0].requests == []


def test_the_sdk_still_lists_and_retrieves_models(gateway, upstream):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()][:1] == ["echo"]
    model = client.models.retrieve("ft:gpt-4o-mini:acme:custom:abc123")
    assert model.id == "ft:gpt-4o-mini:acme:custom:abc123"
    paths = [r.path for r in upstream[0].requests]
    assert paths == ["/v1/models", "/v1/models/ft:gpt-4o-mini:acme:custom:abc123"]
    assert upstream[0].requests[1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_the_sdk_gets_a_not_found_for_endpoints_the_gateway_does_not_serve(gateway, upstream):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-abc")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("meta-llama/Llama-3-8B")  # the SDK sends %2F: not one segment
    assert upstream[0].requests == []


def test_query_strings_are_not_forwarded(gateway, upstream):
    status, _, _ = send(gateway, "GET", "/v1/models?after=x&limit=../../files")
    assert status == 200
    status, _, _ = send(gateway, "POST", "/v1/chat/completions?api-version=1", CHAT_BODY)
    assert status == 200
    assert [(r.path, r.query) for r in upstream[0].requests] == [
        ("/v1/models", ""),
        ("/v1/chat/completions", ""),
    ]


def test_unknown_paths_need_a_key_first(gateway, upstream):
    parts = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", "/v1/models/%2e%2e/files/file-abc/content")
    response = conn.getresponse()
    assert response.status == 401
    conn.close()
    assert upstream[0].requests == []


# -- the table itself (pure) ---------------------------------------------------------------


def test_the_table_resolves_served_endpoints_to_upstream_paths():
    table = Table()
    chat = table.resolve("POST", "/v1/chat/completions", b"/v1/chat/completions")
    assert (chat.endpoint.kind, chat.upstream_path) == (GENERATE, "/chat/completions")
    model = table.resolve("GET", "/v1/models/gpt-4o:x@y", b"/v1/models/gpt-4o:x@y")
    assert model.upstream_path == "/models/gpt-4o:x@y"
    assert model.endpoint.path == "/v1/models/{id}"
    # the decoded path and the raw one must agree
    with pytest.raises(OpenAIError) as raised:
        table.resolve("GET", "/v1/models/../files", b"/v1/models/%2e%2e/files")
    assert raised.value.status == 404
    with pytest.raises(OpenAIError):
        table.resolve("GET", "/v1/models/a", b"/v1/models/%61")


def test_the_table_takes_new_endpoints():
    extra = Endpoint(
        "/v1/messages", "POST", FORWARD, "/messages", headers=frozenset({"anthropic-version"})
    )
    table = Table((extra,))
    target = table.resolve("POST", "/v1/messages", None)
    assert target.endpoint.headers == {"anthropic-version"}
    with pytest.raises(OpenAIError):
        table.resolve("POST", "/v1/chat/completions", None)
    with pytest.raises(ValueError):
        Table((Endpoint("/v1/{id}/x", "GET", FORWARD, "/x"),))


def test_every_percent_encoded_byte_is_refused_anywhere_in_the_path():
    table = Table()
    for byte in range(256):
        for code in (f"%{byte:02x}", f"%{byte:02X}", f"%25{byte:02x}"):
            for raw in (
                f"/v1/models/{code}",
                f"/v1/models/gpt{code}4o",
                f"/v1/models{code}gpt",
                f"/v1/chat/completions{code}",
                f"/v1{code}chat/completions",
            ):
                decoded = unquote(raw, errors="surrogateescape")
                with pytest.raises(OpenAIError) as raised:
                    table.resolve("GET", decoded, raw.encode())
                assert raised.value.status == 404, raw
