"""Classify a golden set with one or more policies through SafeguardClient, bounded.

Every (policy, case) pair is one classification; `concurrency` workers share one job
queue, so at most that many are in flight. A classifier failure on a case becomes an
errored Verdict (label "error"), recorded and reported, never scored as a safe answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.guard.safeguard import ClassifierError, SafeguardClient, Verdict, errored
from proxy.policies import Policy
from proxy.workbench.cases import Case
from proxy.workbench.metrics import Metrics, Observation, compute

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    verdict: Verdict

    @property
    def predicted(self) -> int | None:
        return None if self.verdict.error else int(self.verdict.violation)

    @property
    def correct(self) -> bool | None:
        return None if self.predicted is None else self.predicted == self.case.label

    def observation(self) -> Observation:
        return Observation(
            expected=self.case.label,
            predicted=self.predicted,
            expected_category=self.case.category,
            predicted_category=self.verdict.category,
            latency_ms=self.verdict.latency_ms,
        )


@dataclass(frozen=True, slots=True)
class Run:
    """One policy over the whole golden set, outcomes in case order."""

    policy: Policy
    outcomes: tuple[Outcome, ...]

    @property
    def metrics(self) -> Metrics:
        return compute([o.observation() for o in self.outcomes])

    @property
    def disagreements(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.correct is False]

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.predicted is None]


async def classify_case(client: SafeguardClient, policy: Policy, case: Case) -> Verdict:
    started = time.perf_counter()
    try:
        return await client.classify(policy, case.content)
    except ClassifierError as exc:
        return errored(policy, exc, (time.perf_counter() - started) * 1000)


async def evaluate(
    client: SafeguardClient,
    policies: Sequence[Policy],
    cases: Sequence[Case],
    *,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> list[Run]:
    """Run every policy over every case; at most `concurrency` classifications at once."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    # Interleave policies case by case so a comparison advances both sides together.
    jobs = [(policy, case) for case in cases for policy in policies]
    verdicts: list[Verdict | None] = [None] * len(jobs)
    pending = iter(enumerate(jobs))
    done = 0

    async def worker() -> None:
        nonlocal done
        for slot, (policy, case) in pending:  # shared iterator: each job is taken once
            verdicts[slot] = await classify_case(client, policy, case)
            done += 1
            if progress is not None:
                progress(done, len(jobs))

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
    width = len(policies)
    return [
        Run(
            policy,
            tuple(Outcome(case, _done(verdicts[i * width + p])) for i, case in enumerate(cases)),
        )
        for p, policy in enumerate(policies)
    ]


def _done(verdict: Verdict | None) -> Verdict:
    assert verdict is not None  # every job ran once gather returned
    return verdict
