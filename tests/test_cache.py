"""proxy/guard/cache.py: verdicts cached by (policy version, content), in-flight coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy.guard.cache import VerdictCache
from proxy.guard.safeguard import ClassifierError, Verdict
from proxy.policies import Policy, parse_policy

V1 = parse_policy(b"---\nid: spam\n---\nFlag spam. Answer 0 or 1.\n", name="spam")
V2 = parse_policy(b"---\nid: spam\n---\nFlag spam and scams. Answer 0 or 1.\n", name="spam")


class Classifier:
    """Counts calls; each call waits on `gate` (when set) before answering."""

    def __init__(self, *, violation: bool = False, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.violation = violation
        self.fail = fail
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    def bind(self, policy: Policy, content: str) -> Callable[[], Awaitable[Verdict]]:
        async def classify() -> Verdict:
            self.calls.append((policy.version, content))
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise ClassifierError("timeout", "no answer")
            return Verdict(policy.id, policy.version, self.violation, latency_ms=42.0)

        return classify


async def lookup(
    cache: VerdictCache, classifier: Classifier, policy: Policy, content: str
) -> Verdict:
    return await cache.get_or_classify(policy, content, classifier.bind(policy, content))


async def test_second_lookup_is_a_hit_without_a_call() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier(violation=True)
    first = await lookup(cache, classifier, V1, "buy now")
    second = await lookup(cache, classifier, V1, "buy now")
    assert len(classifier.calls) == 1
    assert (first.cache_hit, first.latency_ms) == (False, 42.0)
    assert (second.cache_hit, second.latency_ms) == (True, 0.0)
    assert second.violation
    assert (cache.hits, cache.misses) == (1, 1)


async def test_different_content_or_policy_version_misses() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier()
    await lookup(cache, classifier, V1, "buy now")
    await lookup(cache, classifier, V1, "buy now!")
    other = await lookup(cache, classifier, V2, "buy now")
    assert len(classifier.calls) == 3
    assert other.policy_version == V2.version != V1.version
    assert not other.cache_hit


async def test_entries_expire_after_the_ttl() -> None:
    cache, classifier = VerdictCache(ttl_s=0.05, size=100), Classifier()
    await lookup(cache, classifier, V1, "buy now")
    await asyncio.sleep(0.1)
    assert not (await lookup(cache, classifier, V1, "buy now")).cache_hit
    assert len(classifier.calls) == 2


@pytest.mark.parametrize(("ttl", "size"), [(0, 100), (60, 0)])
async def test_a_zero_ttl_or_size_disables_caching(ttl: float, size: int) -> None:
    cache, classifier = VerdictCache(ttl_s=ttl, size=size), Classifier()
    await lookup(cache, classifier, V1, "buy now")
    await lookup(cache, classifier, V1, "buy now")
    assert len(classifier.calls) == 2


async def test_errors_are_not_cached() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier(fail=True)
    with pytest.raises(ClassifierError):
        await lookup(cache, classifier, V1, "buy now")
    classifier.fail = False
    verdict = await lookup(cache, classifier, V1, "buy now")
    assert not verdict.cache_hit
    assert len(classifier.calls) == 2


async def test_identical_concurrent_lookups_share_one_call() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier(violation=True)
    classifier.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(lookup(cache, classifier, V1, "buy now")) for _ in range(5)]
    await classifier.started.wait()
    await asyncio.sleep(0)
    classifier.gate.set()
    verdicts = await asyncio.gather(*tasks)
    assert len(classifier.calls) == 1
    assert all(v.violation for v in verdicts)
    assert sorted(v.cache_hit for v in verdicts) == [False, True, True, True, True]


async def test_concurrent_waiters_share_the_leaders_error() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier(fail=True)
    classifier.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(lookup(cache, classifier, V1, "buy now")) for _ in range(3)]
    await classifier.started.wait()
    classifier.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ClassifierError) for r in results)
    assert len(classifier.calls) == 1
    classifier.fail = False
    assert not (await lookup(cache, classifier, V1, "buy now")).cache_hit  # retried afresh


async def test_a_cancelled_leader_lets_a_waiter_classify_itself() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier(violation=True)
    classifier.gate = asyncio.Event()
    leader = asyncio.ensure_future(lookup(cache, classifier, V1, "buy now"))
    await classifier.started.wait()
    waiter = asyncio.ensure_future(lookup(cache, classifier, V1, "buy now"))
    await asyncio.sleep(0)  # the waiter is now waiting on the leader's call
    leader.cancel()
    await asyncio.sleep(0)
    classifier.gate.set()
    verdict = await asyncio.wait_for(waiter, 1)
    assert leader.cancelled()
    assert verdict.violation
    assert not verdict.cache_hit
    assert len(classifier.calls) == 2
    assert (await lookup(cache, classifier, V1, "buy now")).cache_hit


async def test_a_cancelled_waiter_does_not_disturb_the_leader() -> None:
    cache, classifier = VerdictCache(ttl_s=60, size=100), Classifier()
    classifier.gate = asyncio.Event()
    leader = asyncio.ensure_future(lookup(cache, classifier, V1, "buy now"))
    await classifier.started.wait()
    waiter = asyncio.ensure_future(lookup(cache, classifier, V1, "buy now"))
    await asyncio.sleep(0)
    waiter.cancel()
    classifier.gate.set()
    verdict = await leader
    assert waiter.cancelled()
    assert not verdict.violation
    assert len(classifier.calls) == 1
