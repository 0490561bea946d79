"""End to end through the official openai SDK: the gateway changes nothing but the key."""

from __future__ import annotations

import asyncio
import gc
import time

import httpx
import openai
import pytest

from proxy import handler
from proxy.app import GC_GEN0_THRESHOLD
from tests.conftest import KEY, OTHER_KEY, UPSTREAM_KEY


def clients(gw, upstream):
    via = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    direct = openai.OpenAI(base_url=upstream[1].url + "/v1", api_key="direct", max_retries=0)
    return via, direct


def test_chat_matches_upstream(gateway, upstream):
    via, direct = clients(gateway, upstream)
    messages = [{"role": "user", "content": "hello there"}]
    ours = via.chat.completions.create(model="echo", messages=messages)
    theirs = direct.chat.completions.create(model="echo", messages=messages)
    assert (
        ours.choices[0].message.content == theirs.choices[0].message.content == "echo: hello there"
    )
    assert ours.usage == theirs.usage
    assert ours.model_extra["x_upstream_extra"] == {"kept": True}  # unknown fields pass through


def test_stream_matches_upstream_with_usage_chunk(gateway, upstream):
    via, direct = clients(gateway, upstream)
    kwargs = dict(
        model="echo",
        messages=[{"role": "user", "content": "say: one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    ours = list(via.chat.completions.create(**kwargs))
    theirs = list(direct.chat.completions.create(**kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in ours if c.choices)
    assert text == "one two three"
    assert [c.model_dump(exclude={"created"}) for c in ours] == [
        c.model_dump(exclude={"created"}) for c in theirs
    ]
    assert ours[-1].choices == [] and ours[-1].usage.total_tokens > 0


def test_request_fields_reach_upstream_untouched(gateway, upstream):
    via, _ = clients(gateway, upstream)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    via.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "hi"}],
        tools=tools,
        n=2,
        logprobs=True,
        response_format={"type": "json_object"},
        extra_body={"my_custom_field": [1, 2]},
    )
    received = upstream[0].requests[-1]
    assert received.body["tools"] == tools
    assert received.body["n"] == 2 and received.body["logprobs"] is True
    assert received.body["response_format"] == {"type": "json_object"}
    assert received.body["my_custom_field"] == [1, 2]
    # The client's gateway key never travels upstream; the upstream's own key does.
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert KEY not in str(received.headers)


def test_tool_calls_round_trip(gateway):
    via = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    reply = via.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "weather?"}]
    )
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    chunks = list(
        via.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "weather?"}], stream=True
        )
    )
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed[0].function.name == "get_weather"


def test_completions_embeddings_models_responses(gateway):
    via = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    assert via.completions.create(model="echo", prompt="abc").choices[0].text == "echo: abc"
    streamed = "".join(
        c.choices[0].text
        for c in via.completions.create(model="echo", prompt="say: x y", stream=True)
    )
    assert streamed == "x y"
    emb = via.embeddings.create(model="echo", input=["a", "bb"])
    assert [d.index for d in emb.data] == [0, 1]
    assert {m.id for m in via.models.list()} >= {"echo", "tools"}
    resp = via.responses.create(model="echo", input="hello")
    assert resp.output_text == "echo: hello"
    events = list(via.responses.create(model="echo", input="say: a b c", stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "a b c"


async def test_async_client_stream(gateway):
    via = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    stream = await via.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "say: async works"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "async works"
    replies = await asyncio.gather(
        *(
            via.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": f"n{i}"}]
            )
            for i in range(20)
        )
    )
    assert [r.choices[0].message.content for r in replies] == [f"echo: n{i}" for i in range(20)]
    await via.close()


def test_every_response_has_a_request_id(gateway):
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.headers["x-request-id"].startswith("req_")
    bad = httpx.post(gateway.base_url + "/chat/completions", content=b"{")
    assert bad.status_code == 401 and bad.headers["x-request-id"]


# -- errors, as the SDK's typed exceptions ----------------------------------------------


def test_unknown_key_is_401(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "invalid_api_key"


def test_unknown_model_is_404_for_a_tenant_without_it(make_gateway):
    gw = make_gateway(
        raw={
            "tenants": {
                "acme": {"keys": [KEY], "routes": {"gpt-*": "open"}},
                "globex": {"keys": [OTHER_KEY], "route": "open"},
            }
        }
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="claude-x", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "model_not_found"


def test_malformed_json_is_400(gateway):
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        content=b'{"model": "echo",',
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    assert "Traceback" not in r.text


def test_body_over_the_limit_is_413(make_gateway):
    gw = make_gateway(raw={"server": {"max_body_bytes": 10_000}})
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x" * 20_000}]
        )
    assert err.value.status_code == 413
    # chunked upload without content-length is cut off too
    r = httpx.post(
        gw.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        content=iter([b'{"model": "echo", "x": "', b"y" * 20_000, b'"}']),
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_upstream_errors_pass_through(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(
            model="fail-429", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.body["code"] == "scripted_429"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="fail-400", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model="fail-500", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 500


def test_upstream_down_is_502(make_gateway):
    gw = make_gateway(raw={"upstreams": {"main": {"base_url": "http://127.0.0.1:9/v1"}}})
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502 and err.value.code == "upstream_unavailable"
    assert UPSTREAM_KEY not in err.value.response.text


def test_upstream_drop_is_502_and_mid_stream_drop_ends_the_stream(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="drop", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        chunks = list(
            client.chat.completions.create(
                model="drop",
                messages=[{"role": "user", "content": "say: a b c d e f"}],
                stream=True,
            )
        )
        # If the SDK did not raise, at least the stream must not pretend to be complete.
        assert not any(c.choices and c.choices[0].finish_reason for c in chunks)
        raise httpx.RemoteProtocolError("stream ended early")


def test_upstream_timeout_is_504(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="hang", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504 and err.value.code == "upstream_timeout"


def test_client_disconnect_cancels_the_upstream_stream(gateway, upstream):
    upstream[0].chunk_delay_s = 0.05
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={
            "model": "echo",
            "stream": True,
            "messages": [{"role": "user", "content": "say: " + "w " * 200}],
        },
    ) as r:
        for _ in r.iter_raw():
            break
    for _ in range(100):
        if upstream[0].streams_cancelled:
            break
        time.sleep(0.02)
    assert upstream[0].streams_cancelled >= 1


def test_tenants_only_reach_their_own_routes(make_gateway, upstream):
    gw = make_gateway(guarded={"upstream": "main", "input": {"policies": ["cheating"]}})
    prompt = [{"role": "user", "content": "say: get an aimbot"}]
    acme = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        acme.chat.completions.create(model="guarded-x", messages=prompt)
    # globex's only route is "open": naming acme's guarded-* model does not reach "guarded"
    other = openai.OpenAI(base_url=gw.base_url, api_key=OTHER_KEY, max_retries=0)
    reply = other.chat.completions.with_raw_response.create(model="guarded-x", messages=prompt)
    assert reply.parse().choices[0].message.content == "get an aimbot"
    assert "x-safeguard-decision" not in reply.headers


def test_a_client_request_id_is_echoed_beside_the_gateways_only_when_it_is_safe(gateway):
    url = gateway.base_url + "/chat/completions"
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    auth = {"authorization": f"Bearer {KEY}"}
    kept = httpx.post(url, json=body, headers={**auth, "x-request-id": "trace-42.a"})
    assert kept.headers["x-request-id"].startswith("req_")  # always the gateway's own
    assert kept.headers["x-client-request-id"] == "trace-42.a"
    odd = httpx.post(url, json=body, headers={**auth, "x-request-id": "a b\tc"})
    assert odd.headers["x-request-id"].startswith("req_")
    assert "x-client-request-id" not in odd.headers


def test_a_serving_gateway_collects_garbage_less_often_and_restores_it_on_shutdown(make_gateway):
    before = gc.get_threshold()
    gw = make_gateway()
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    assert gc.get_freeze_count() > 0  # startup objects are out of the collector's way
    gw.handle.stop()
    assert gc.get_threshold() == before


def test_answers_are_read_for_usage_only_when_metrics_or_a_span_will_use_it(
    make_gateway, monkeypatch
):
    parsed, watched = [], []
    monkeypatch.setattr(handler, "json_or_none", lambda raw: parsed.append(raw) or None)
    real_watch = handler.StreamWatch
    monkeypatch.setattr(handler, "StreamWatch", lambda *a: watched.append(a) or real_watch(*a))
    for metrics, reads in (("prometheus", True), ("none", False)):  # traces: none in both
        gw = make_gateway(raw={"telemetry": {"metrics": metrics}})
        sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        parsed.clear(), watched.clear()
        for stream in (False, True):
            answer = sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], stream=stream
            )
            if stream:
                list(answer)
        assert (len(parsed), len(watched)) == ((1, 1) if reads else (0, 0)), metrics
