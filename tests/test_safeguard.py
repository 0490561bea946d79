"""proxy/guard/safeguard.py: reading the model's verdict, and the request the model gets."""

from __future__ import annotations

import orjson
import pytest

from proxy.guard import answer
from proxy.guard.safeguard import ClassifierError, SafeguardClient, Verdict, parse_verdict
from proxy.policies import parse_policy

POLICY_SOURCE = b"""---
id: cheating
action: block
---
## INSTRUCTIONS
Flag requests for cheating tools. Return JSON {"violation": 0|1}.
"""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("0", (False, None, None)),
        ("1", (True, None, None)),
        (" 1\n", (True, None, None)),
        ('{"violation": 0}', (False, None, None)),
        (
            '{"violation": 1, "policy_category": "CH2", "rationale": "asks for an aimbot"}',
            (True, "CH2", "asks for an aimbot"),
        ),
        ('{"violation": true, "policy_category": ""}', (True, None, None)),
        ('{"violation": "0", "rationale": ""}', (False, None, None)),
        ('{"violation": 1.0}', (True, None, None)),
        ('{"violation": 0.0}', (False, None, None)),
        ('Verdict: {"violation": 1, "policy_category": 2}', (True, "2", None)),
        ('```json\n{"violation": 1, "policy_category": "CH1"}\n```', (True, "CH1", None)),
        ("```\n0\n```", (False, None, None)),
    ],
)
def test_parse_verdict_accepted_forms(content: str, expected: tuple) -> None:
    assert parse_verdict(content) == expected


@pytest.mark.parametrize(
    "content",
    [
        # detokenized without special tokens
        'analysisThe user wants an aimbot; that is CH2. {"violation": 0} would be wrong.'
        'assistantfinal{"violation": 1, "policy_category": "CH2"}',
        # special tokens kept
        '<|channel|>analysis<|message|>Looks like {"violation": 0}?<|end|>'
        '<|start|>assistant<|channel|>final<|message|>{"violation": 1, '
        '"policy_category": "CH2"}<|return|>',
    ],
    ids=["plain", "tokens"],
)
def test_raw_harmony_reads_only_the_final_channel(content: str) -> None:
    assert parse_verdict(content) == (True, "CH2", None)


def test_raw_harmony_bare_final_answer() -> None:
    assert parse_verdict("analysisNothing wrong here, {so} safe.assistantfinal0") == (
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    "content",
    [
        None,
        "",
        "I think it is a 1",
        "yes",
        '{"violation": 2}',
        '{"verdict": 1}',
        '{"violation": "yes"}',
        '{"violation": 1',
        "[1]",
        '{"violation": 1} and also {"violation": 0}',
        '{"violation": 0.5}',
        # raw harmony cut off before its final channel: a verdict it mentions is no answer
        'analysisIf this were safe we would answer {"violation": 0}. But the user',
        '<|channel|>analysis<|message|>Maybe {"violation": 0}',
    ],
)
def test_garbage_is_unparseable_never_an_allow(content: str | None) -> None:
    with pytest.raises(ClassifierError) as info:
        parse_verdict(content)
    assert info.value.kind == "unparseable"


def test_verdict_label_and_record() -> None:
    verdict = Verdict("cheating", "abc123", True, category="CH2", latency_ms=12.3456)
    assert verdict.label == "violation"
    assert Verdict("cheating", "abc123", False).label == "safe"
    assert Verdict("cheating", "abc123", False, error="timeout: x").label == "error"
    record = verdict.as_record()
    assert record["policy"] == "cheating"
    assert record["version"] == "abc123"
    assert record["label"] == "violation"
    assert record["latency_ms"] == 12.35


# --- the request the classifier gets -----------------------------------------------------


def request(client: SafeguardClient, source: bytes, content: str) -> dict:
    return orjson.loads(client.request_body(parse_policy(source, name="cheating"), content))


def test_request_body_shape() -> None:
    client = SafeguardClient("http://127.0.0.1:30000/v1/", "openai/gpt-oss-safeguard-20b")
    body = request(client, POLICY_SOURCE, "how do I write an aimbot?")
    policy_text = parse_policy(POLICY_SOURCE, name="cheating").text
    assert body["model"] == "openai/gpt-oss-safeguard-20b"
    assert body["messages"] == [
        {"role": "system", "content": policy_text},
        {"role": "user", "content": "how do I write an aimbot?"},
    ]
    assert policy_text.startswith("## INSTRUCTIONS") and "id: cheating" not in policy_text
    assert body["reasoning_effort"] == "low"
    assert body["stream"] is False
    assert "max_tokens" not in body and "max_completion_tokens" not in body
    assert client.url == "http://127.0.0.1:30000/v1/chat/completions"


def test_policy_prefix_is_byte_identical_across_calls() -> None:
    client = SafeguardClient("http://h/v1", "m")
    policy = parse_policy(POLICY_SOURCE, name="cheating")
    first = client.request_body(policy, "first content")
    second = client.request_body(policy, "a different, longer piece of content")
    cut = first.index(b'"role":"user"')
    assert first[:cut] == second[:cut]
    assert orjson.loads(first)["messages"][0] == orjson.loads(second)["messages"][0]


def test_policy_reasoning_effort_overrides_the_client_default() -> None:
    client = SafeguardClient("http://h/v1", "m", reasoning_effort="medium")
    assert request(client, POLICY_SOURCE, "x")["reasoning_effort"] == "medium"
    high = POLICY_SOURCE.replace(b"action: block\n", b"action: block\nreasoning_effort: high\n")
    assert request(client, high, "x")["reasoning_effort"] == "high"


@pytest.mark.parametrize(
    "content",
    [
        '{"violation": 1, "policy_category": "aimbot", "rationale": "cheat"}',
        '{"violation":0,"policy_category":null,"rationale":""}',
        '{"violation": "1"}',
        '{"violation": true, "rationale": "says assistantfinal {\\"violation\\": 0}"}',
        '{"violation": 1, "note": "<|end|>"}',
        '{"violation": 2}',
        '{"violation": null}',
        '{"policy_category": "x"}',
        '{"violation": 1, "violation": 0}',
        '{"violation": 1, "n": NaN}',
        '{"violation": 1} {"violation": 0}',
        '  {"violation": 0, "rationale": {"nested": {"violation": 1}}}  ',
    ],
)
def test_the_quick_read_of_a_verdict_object_agrees_with_the_long_one(content, monkeypatch) -> None:
    def read() -> object:
        try:
            return parse_verdict(content)
        except ClassifierError as exc:
            return exc.kind, exc.detail

    quick = read()
    monkeypatch.setattr(answer, "_one_object", lambda text: None)
    assert quick == read()


@pytest.mark.parametrize("extra", [{}, {"messages": [], "top_p": 1}, {"provider": {"x": 1}}])
@pytest.mark.parametrize("content", ["", "plain", 'quotes " and \\ and \x00 and é 🙂', "a" * 5000])
def test_the_pre_encoded_body_is_the_plain_encoding(extra: dict, content: str) -> None:
    client = SafeguardClient("http://h/v1", "m", runtime="vllm", extra_body=extra)
    policy = parse_policy(POLICY_SOURCE, name="cheating")
    plain = client._encode(policy.text, "low", content)
    assert client.request_body(policy, content) == plain
    assert client.request_body(policy, content) == plain  # from the stored frame
