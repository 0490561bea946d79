"""The runner: bounded concurrency, case order kept, progress, errors recorded."""

from __future__ import annotations

import pytest

from proxy.guard.safeguard import SafeguardClient
from proxy.policies import load_policy
from proxy.workbench.cases import Case
from proxy.workbench.runner import evaluate


@pytest.fixture
async def client(safeguard):
    client = SafeguardClient(safeguard.url, "openai/gpt-oss-safeguard-20b", timeout_s=5)
    yield client
    await client.aclose()


def cases(*contents: str) -> list[Case]:
    return [Case(i, i, text, int("aimbot" in text)) for i, text in enumerate(contents, start=1)]


async def test_at_most_concurrency_classifications_in_flight(safeguard, client, write_policy):
    policy = load_policy(write_policy("cheating", "aimbot"))
    safeguard.fake.delay_s = 0.2
    seen: list[tuple[int, int]] = []
    runs = await evaluate(
        client,
        [policy],
        cases(*[f"case {i}" for i in range(7)]),
        concurrency=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    arrivals = sorted(c.at for c in safeguard.fake.calls)
    assert len(arrivals) == 7
    assert arrivals[2] - arrivals[0] < 0.1  # the first three went out together
    assert arrivals[3] - arrivals[0] > 0.15  # the fourth waited for a free slot
    assert arrivals[6] - arrivals[3] > 0.15
    assert seen == [(n, 7) for n in range(1, 8)]
    assert [o.case.index for o in runs[0].outcomes] == list(range(1, 8))


async def test_outcomes_follow_case_order_per_policy(safeguard, client, write_policy):
    a = load_policy(write_policy("a", "aimbot"))
    b = load_policy(write_policy("b", "hello"))
    runs = await evaluate(client, [a, b], cases("hello", "aimbot", "other"), concurrency=4)
    assert [run.policy.id for run in runs] == ["a", "b"]
    assert [o.predicted for o in runs[0].outcomes] == [0, 1, 0]
    assert [o.predicted for o in runs[1].outcomes] == [1, 0, 0]
    assert [o.verdict.policy_id for o in runs[1].outcomes] == ["b", "b", "b"]


async def test_classifier_failures_become_errored_outcomes(safeguard, write_policy):
    policy = load_policy(write_policy("cheating", "aimbot"))
    safeguard.fake.mode = "timeout"
    client = SafeguardClient(safeguard.url, "m", timeout_s=0.3)
    try:
        runs = await evaluate(client, [policy], cases("aimbot", "hello"), concurrency=2)
    finally:
        await client.aclose()
    run = runs[0]
    assert [o.predicted for o in run.outcomes] == [None, None]
    assert all(o.verdict.label == "error" and "timeout" in o.verdict.error for o in run.outcomes)
    assert len(run.errors) == 2 and run.disagreements == []
    assert (run.metrics.tn, run.metrics.fn, run.metrics.errors) == (0, 0, 2)


async def test_concurrency_must_be_positive(client, write_policy):
    with pytest.raises(ValueError):
        await evaluate(client, [load_policy(write_policy("p", "x"))], cases("a"), concurrency=0)
