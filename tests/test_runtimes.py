"""The classifier client against the response bodies of every runtime serving the model.

tests/fixtures/classifier/*.json are chat completion bodies written from each runtime's
documented format (SGLang, vLLM, Ollama, OpenRouter, llama.cpp, `<think>` models), and
the known-bad ones: an answer that is cut, filtered, ambiguous or absent is an error
(the route's fail mode decides), never an allow.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.config import Classifier
from proxy.guard.answer import ClassifierError, read_answer
from proxy.guard.safeguard import SafeguardClient
from proxy.policies import parse_policy
from tests.fakes.serve import serve

FIXTURES = Path(__file__).parent / "fixtures" / "classifier"
POLICY = parse_policy(
    b'## INSTRUCTIONS\nFlag cheating tools. Answer {"violation": 0|1}.\n', name="c"
)


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


@pytest.mark.parametrize(
    ("fixture", "violation", "category", "shape"),
    [
        ("sglang", True, "CH2", "content + reasoning_content"),
        ("sglang-bare", False, None, "content + reasoning_content"),
        ("sglang-no-parser", True, "CH2", "harmony channels in content"),
        ("vllm", False, None, "content + reasoning"),
        ("vllm-reasoning-content", True, "CH2", "content + reasoning_content"),
        ("vllm-content-null", True, "CH2", "verdict in reasoning, content empty"),
        ("vllm-content-null-marker", False, None, "verdict in reasoning, content empty"),
        ("ollama", True, "CH2", "content + reasoning"),
        ("openrouter", False, None, "content + reasoning"),
        ("llamacpp-harmony", True, "CH2", "harmony channels in content"),
        ("llamacpp-harmony-constrain", False, None, "harmony channels in content"),
        ("think-tags", False, None, "<think> + content"),
    ],
)
def test_every_documented_shape_is_read(
    fixture: str, violation: bool, category: str | None, shape: str
) -> None:
    answer = read_answer(body(fixture))
    assert (answer.violation, answer.category, answer.shape) == (violation, category, shape)
    assert answer.reasoning, "the reasoning is kept for the audit record"
    assert "violation" not in answer.reasoning or fixture.startswith("vllm-content-null")
    assert answer.rationale or fixture == "sglang-bare"


@pytest.mark.parametrize(
    ("fixture", "problem"),
    [
        ("bad-length-truncated", "finish_reason length"),
        ("bad-length-complete", "finish_reason length"),
        ("bad-filtered", "finish_reason content_filter"),
        ("bad-two-verdicts", "two different verdicts"),
        ("bad-cut-json", "cut short"),
        ("bad-harmony-cut", "ended before a final answer"),
        ("bad-think-unclosed", "inside <think>"),
        ("bad-content-null-no-verdict", "no verdict ending the reasoning"),
        ("bad-sglang-dropped-final", "no verdict ending the reasoning"),
        ("bad-content-null-ambiguous", "two different verdicts"),
        ("bad-empty", "empty classifier answer"),
        ("bad-error-object", "not a chat completion"),
        ("bad-no-choices", "not a chat completion"),
    ],
)
def test_a_partial_or_ambiguous_answer_is_an_error(fixture: str, problem: str) -> None:
    with pytest.raises(ClassifierError) as info:
        read_answer(body(fixture))
    assert info.value.kind == "unparseable"
    assert problem in str(info.value)


def test_every_fixture_is_in_a_table() -> None:
    source = Path(__file__).read_text()
    missing = [p.stem for p in FIXTURES.glob("*.json") if f'("{p.stem}", ' not in source]
    assert not missing, f"fixtures without an expectation: {missing}"


@pytest.fixture(scope="module")
def runtime_server():
    """A loopback server answering each request with the fixture its model names."""
    seen: list[dict] = []

    async def chat(request: Request) -> Response:
        request_body = orjson.loads(await request.body())
        seen.append(request_body)
        return Response(body(request_body["model"]), media_type="application/json")

    async def models(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer sk-hosted":
            return Response(b'{"error": {"message": "no key"}}', status_code=401)
        return Response(b'{"object": "list", "data": []}', media_type="application/json")

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
    ]
    handle = serve(Starlette(routes=routes))
    yield handle.url + "/v1", seen
    handle.stop()


@pytest.mark.parametrize(
    ("fixture", "label"),
    [("vllm-content-null", "violation"), ("ollama", "violation"), ("openrouter", "safe")],
)
async def test_the_client_reads_each_runtime_over_http(runtime_server, fixture, label) -> None:
    url, _ = runtime_server
    client = SafeguardClient(url, fixture, runtime="vllm")
    try:
        verdict = await client.classify(POLICY, "content")
    finally:
        await client.aclose()
    assert verdict.label == label
    assert verdict.reasoning


async def test_a_truncated_answer_over_http_is_an_error(runtime_server) -> None:
    url, _ = runtime_server
    client = SafeguardClient(url, "bad-length-truncated")
    try:
        with pytest.raises(ClassifierError, match="finish_reason length"):
            await client.classify(POLICY, "content")
    finally:
        await client.aclose()


# --- what each runtime is sent --------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "temperature"),
    [("sglang", 0.0), ("vllm", 0.0), ("ollama", 0.0), ("openai-compatible", None)],
)
def test_runtime_request_defaults(runtime: str, temperature: float | None) -> None:
    client = SafeguardClient.from_config(Classifier(runtime=runtime, reasoning_effort="medium"))
    sent = orjson.loads(client.request_body(POLICY, "x"))
    assert sent["reasoning_effort"] == "medium"
    assert sent.get("temperature") == temperature
    assert ("temperature" in sent) is (temperature is not None)
    assert sent["stream"] is False


def test_temperature_and_extra_fields_from_the_config() -> None:
    settings = Classifier(
        runtime="openai-compatible",
        temperature=1.0,
        extra_body={"provider": {"order": ["groq"]}, "stream": True},
    )
    sent = orjson.loads(SafeguardClient.from_config(settings).request_body(POLICY, "x"))
    assert sent["temperature"] == 1.0
    assert sent["provider"] == {"order": ["groq"]}
    assert sent["stream"] is False, "the client reads one JSON body: extra fields cannot stream"


async def test_readiness_sends_the_api_key_a_hosted_provider_needs(runtime_server) -> None:
    url, _ = runtime_server
    keyed = SafeguardClient(url, "m", runtime="openai-compatible", api_key="sk-hosted")
    anonymous = SafeguardClient(url, "m", runtime="openai-compatible")
    try:
        assert await keyed.ready() == (True, "ok")
        assert await anonymous.ready() == (False, "HTTP 401")
    finally:
        await keyed.aclose()
        await anonymous.aclose()
