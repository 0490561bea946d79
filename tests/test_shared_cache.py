"""The shared verdict cache against a real Redis or Valkey server (tests.fakes.engines)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis

from proxy.guard.safeguard import Verdict
from proxy.guard.shared_cache import SharedCache, decode_verdict, encode_verdict, redis_url
from tests.fakes.serve import free_socket
from tests.test_guard import chat

ROUTE = {"upstream": "main", "input": {"policies": ["cheating", "spam"]}}


def shared(url: str) -> dict:
    return {"classifier": {"cache_url": url}}


def wait_for_keys(url: str, count: int, timeout: float = 5.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while len(client.keys("safeguard:verdict:*")) < count:
        assert time.monotonic() < deadline, "the verdicts never reached the shared cache"
        time.sleep(0.02)
    client.close()


@pytest.fixture
def cache_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def test_two_gateways_sharing_the_cache_classify_a_repeated_text_once(
    make_gateway, classifier, cache_url
):
    one = make_gateway(guarded=ROUTE, raw=shared(cache_url))
    two = make_gateway(guarded=ROUTE, raw=shared(cache_url.replace("redis://", "valkey://")))
    text = "a repeated question about the weather"
    assert chat(one, "guarded-1", text).status_code == 200
    wait_for_keys(cache_url, 2)  # written in the background, after the answer
    for gw in (two, one, two):
        assert chat(gw, "guarded-1", text).status_code == 200
    assert len(classifier[0].calls_for("cheating")) == 1
    assert len(classifier[0].calls_for("spam")) == 1
    # a violation found by one gateway is enforced by the other without a call
    with pytest.raises(openai.BadRequestError):
        chat(one, "guarded-1", "where do I get an aimbot")
    wait_for_keys(cache_url, 4)
    with pytest.raises(openai.BadRequestError):
        chat(two, "guarded-1", "where do I get an aimbot")
    assert len(classifier[0].calls_for("cheating")) == 2
    metrics = httpx.get(two.url + "/metrics").text
    assert 'safeguard_shared_cache_total{result="hit"} 4' in metrics


def test_keys_are_policy_version_and_content_digest_only(make_gateway, cache_url):
    gw = make_gateway(guarded=ROUTE, raw=shared(cache_url))
    chat(gw, "guarded-1", "SECRET-TEXT-31337 hello")
    wait_for_keys(cache_url, 2)
    client = redis.Redis.from_url(cache_url)
    keys = client.keys("*")
    versions = {p.version for p in gw.gateway.policies.values()}
    assert {k.decode().split(":")[2] for k in keys} <= versions
    assert all(b"SECRET-TEXT" not in k and b"acme" not in k for k in keys)
    assert all(b"SECRET-TEXT" not in client.get(k) for k in keys)
    client.close()


def test_a_cache_outage_degrades_to_the_local_cache_never_to_an_error(make_gateway, classifier):
    sock = free_socket()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    gw = make_gateway(guarded=ROUTE, raw=shared(f"redis://127.0.0.1:{port}/0"))
    try:
        assert chat(gw, "guarded-1", "hello during an outage").status_code == 200
        assert chat(gw, "guarded-1", "hello during an outage").status_code == 200
        with pytest.raises(openai.BadRequestError):
            chat(gw, "guarded-1", "an aimbot during an outage")
    finally:
        sock.close()
    assert len(classifier[0].calls_for("cheating")) == 2  # the local cache still works
    metrics = httpx.get(gw.url + "/metrics").text
    assert "safeguard_shared_cache_up 0" in metrics
    assert 'safeguard_shared_cache_total{result="error"} 0' not in metrics


def test_a_verdict_round_trips_without_the_request_fields():
    verdict = Verdict("p", "v1", True, "C1", "because", "thinking", latency_ms=120.0)
    back = decode_verdict(encode_verdict(verdict), "p", "v1")
    assert back == Verdict("p", "v1", True, "C1", "because", "thinking", cache_hit=True)
    assert redis_url("valkeys://h:1/0") == "rediss://h:1/0"


def test_gateways_missing_the_same_text_at_once_classify_it_once(
    make_gateway, classifier, cache_url
):
    one = make_gateway(guarded=ROUTE, raw=shared(cache_url))
    two = make_gateway(guarded=ROUTE, raw=shared(cache_url))
    classifier[0].delay_s = 0.3  # both miss while the first classification runs
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda gw: chat(gw, "guarded-1", "same text, same moment"), [one, two] * 2)
            )
    finally:
        classifier[0].delay_s = 0.0
    assert [a.status_code for a in answers] == [200] * 4
    assert len(classifier[0].calls_for("cheating")) == 1
    assert len(classifier[0].calls_for("spam")) == 1


async def test_a_claim_given_up_lets_its_waiters_classify_and_a_verdict_reaches_them(cache_url):
    first = SharedCache(cache_url, ttl_s=60, claim_s=5)
    second = SharedCache(cache_url, ttl_s=60, claim_s=5)
    digest = b"\x01" * 32
    try:
        assert await first.claim("v1", digest)
        assert not await second.claim("v1", digest)
        waiting = asyncio.ensure_future(second.wait("p", "v1", digest))
        await asyncio.sleep(0.05)
        first.release("v1", digest)  # its classification failed
        assert await asyncio.wait_for(waiting, 1) is None
        assert await second.claim("v1", digest)  # so the waiter classifies itself
        first.release("v1", digest)  # a late release of the old claim leaves the new one be
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(first.wait("p", "v1", digest))
        await asyncio.sleep(0.05)  # it keeps waiting while the claim stands
        second.put("v1", digest, Verdict("p", "v1", True, "C1"))
        found = await asyncio.wait_for(waiting, 1)
        assert found is not None and found.violation and found.cache_hit
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_classification_that_raises_gives_up_its_claim(cache_url):
    from proxy.guard.cache import VerdictCache
    from proxy.policies import Policy

    shared_cache = SharedCache(cache_url, ttl_s=60, claim_s=5)
    cache = VerdictCache(ttl_s=60, size=10, shared=shared_cache)

    async def falls_over() -> Verdict:
        raise RuntimeError("the classifier client fell over")

    try:
        with pytest.raises(RuntimeError):
            await cache.get_or_classify(Policy("p", "text", "v1"), "some text", falls_over)
        await asyncio.sleep(0.05)
        client = redis.Redis.from_url(cache_url)
        assert client.keys("safeguard:claim:*") == []  # other processes need not wait it out
        client.close()
    finally:
        await shared_cache.aclose()
