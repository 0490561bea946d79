"""Guard decisions: run a side's policies over text slots and decide what happens.

Per policy: pattern detectors first (cheap, synchronous; they redact, or flag without a
model call), then the classifier through the verdict cache. All enforced policies of a
side run in parallel; shadow policies run in the background and never change anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.config import PolicyRef, Side
from proxy.guard.cache import VerdictCache
from proxy.guard.detectors import find_spans, redact
from proxy.guard.safeguard import ClassifierError, SafeguardClient, Verdict, errored
from proxy.openai_api import Slot, input_slots, render
from proxy.policies import Policy

SEVERITY = ("allow", "annotate", "redact", "error", "block")


@dataclass(slots=True)
class Outcome:
    """One policy's verdict on one side (one choice, for output) and what it does."""

    policy: Policy
    action: str  # the effective action: the route's override, else the policy's own
    side: str
    verdict: Verdict
    redacted: bool = False
    choice: int | None = None
    tool: str | None = None  # output: the tool whose call arguments this verdict is on

    @property
    def effect(self) -> str:
        if self.verdict.error:
            return "error"
        if self.redacted:
            return "redact"
        if not self.verdict.violation:
            return "allow"
        # A redact policy the model still flags after its patterns ran has no span to cut.
        return {"block": "block", "log": "allow"}.get(self.action, "annotate")

    def filter_result(self) -> dict[str, Any]:
        """Azure's per-category filter detail."""
        result: dict[str, Any] = {
            "filtered": self.effect in ("block", "redact"),
            "detected": self.verdict.violation,
        }
        if self.verdict.violation:
            result["category"] = self.verdict.category or self.policy.category or self.policy.id
        if self.redacted:
            result["redacted"] = True
        return result

    def record(self) -> dict[str, Any]:
        record = self.verdict.as_record() | {
            "side": self.side,
            "action": self.action,
            "choice": self.choice,
        }
        if self.tool is not None:
            record["tool"] = self.tool
        return record


def worse(a: str, b: str) -> str:
    """The more severe of two decisions."""
    return a if SEVERITY.index(a) >= SEVERITY.index(b) else b


def decide(outcomes: Sequence[Outcome], fail: str) -> str:
    """allow | annotate | redact | block, or error when the guard is unusable and fails closed."""
    worst = "allow"
    for outcome in outcomes:
        if not (outcome.effect == "error" and fail == "open"):
            worst = worse(worst, outcome.effect)
    return worst


@dataclass(slots=True)
class SideResult:
    outcomes: list[Outcome] = field(default_factory=list)
    shadow: list[asyncio.Task[Outcome | None]] = field(default_factory=list)

    def decision(self, fail: str) -> str:
        return decide(self.outcomes, fail)

    def blocked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.effect == "block"]

    def filter_results(self) -> dict[str, dict[str, Any]]:
        return {o.policy.id: o.filter_result() for o in self.outcomes if not o.verdict.error}


class Guard:
    def __init__(
        self, classifier: SafeguardClient, cache: VerdictCache, telemetry: Any, metrics: Any
    ) -> None:
        self.classifier = classifier
        self.cache = cache
        self.telemetry = telemetry
        self.metrics = metrics

    async def verdict(self, policy: Policy, content: str, side: str) -> Verdict:
        """The model's verdict, cached; a classifier failure becomes an error verdict."""
        started = time.perf_counter()
        with self.telemetry.classification_span(
            policy.id, policy.version, self.classifier.model, side
        ) as span:
            try:
                verdict = await self.cache.get_or_classify(
                    policy, content, lambda: self.classifier.classify(policy, content)
                )
            except ClassifierError as exc:
                verdict = errored(policy, exc, (time.perf_counter() - started) * 1000)
            self.telemetry.record_verdict(span, verdict)
        return verdict

    def _detect(self, job: _Job) -> None:
        """Pattern detectors, synchronously: redact policies rewrite their slots here, before
        any policy's text is rendered for the model (shadow policies only look)."""
        for slot in job.slots if job.policy.detectors else ():
            spans = find_spans(slot.text, job.policy.detectors)
            if not spans:
                continue
            job.labels.extend(s.label for s in spans)
            if job.action == "redact" and not job.shadow:
                slot.text = redact(slot.text, spans)
                job.redacted = True

    async def _judge(self, job: _Job) -> Outcome | None:
        outcome = await self._classify(job)
        if outcome is not None:
            self.metrics.observe_verdict(outcome.verdict, side=outcome.side, action=outcome.effect)
        return outcome

    async def _classify(self, job: _Job) -> Outcome | None:
        policy, labels = job.policy, job.labels
        if (labels and not job.redacted) or policy.detectors_only:
            # Triage: a pattern hit is a violation without spending a model call; a
            # detectors-only policy never calls the model (no hit: safe).
            found = ", ".join(sorted(set(labels)))
            verb = "redacted" if job.redacted else "matched"
            verdict = Verdict(
                policy.id,
                policy.version,
                bool(labels),
                category=labels[0] if labels else None,
                rationale=f"pattern detectors {verb}: {found}" if labels else None,
                source="detector",
                shadow=job.shadow,
            )
            return Outcome(
                policy, job.action, job.side, verdict, redacted=job.redacted, choice=job.choice
            )
        content = render(job.slots, job.scope)
        if not content:
            return None
        verdict = await self.verdict(policy, job.context + content, job.side)
        if job.shadow:
            verdict = replace(verdict, shadow=True)
        if job.redacted and not verdict.violation and not verdict.error:
            rationale = f"pattern detectors redacted: {', '.join(sorted(set(labels)))}"
            verdict = replace(verdict, violation=True, category=labels[0], rationale=rationale)
        return Outcome(
            policy, job.action, job.side, verdict, redacted=job.redacted, choice=job.choice
        )

    async def _run(self, enforced: list[_Job], shadow: list[_Job]) -> SideResult:
        for job in shadow + enforced:  # shadow jobs only look: they see the original text
            self._detect(job)
        result = SideResult(shadow=[asyncio.ensure_future(self._judge(job)) for job in shadow])
        outcomes = await asyncio.gather(*(self._judge(job) for job in enforced))
        result.outcomes = [o for o in outcomes if o is not None]
        return result

    async def check_request(
        self, side: Side, policies: Mapping[str, Policy], body: dict[str, Any], endpoint: str
    ) -> SideResult:
        """The input side: each policy reads its scope of the request (and may redact it)."""

        def job(ref: PolicyRef, shadow: bool) -> _Job:
            policy = policies[ref.id]
            slots = input_slots(body, policy.scope, endpoint)
            return _Job(policy, _action(ref, policy), "input", slots, policy.scope, shadow)

        return await self._run(
            [job(ref, False) for ref in side.policies], [job(ref, True) for ref in side.shadow]
        )

    async def check_completion(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        choices: Sequence[list[Slot]],
        context: str = "",
    ) -> SideResult:
        """The output side: every policy reads each choice's text (and may redact it)."""

        def jobs(refs: tuple[PolicyRef, ...], shadow: bool) -> list[_Job]:
            return [
                _Job(
                    policies[ref.id],
                    _action(ref, policies[ref.id]),
                    "output",
                    slots,
                    "last_user",
                    shadow,
                    choice=index,
                    context=context,
                )
                for index, slots in enumerate(choices)
                for ref in refs
            ]

        return await self._run(jobs(side.policies, False), jobs(side.shadow, True))

    async def check_text(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        text: str,
        *,
        context: str = "",
        choice: int | None = None,
    ) -> tuple[SideResult, str]:
        """One piece of output text (a stream window, classified after `context`): the
        outcomes and the text as it may be released."""
        slot = Slot({"text": text}, "text", "assistant")
        result = await self.check_completion(side, policies, [[slot]], context)
        for outcome in result.outcomes:
            outcome.choice = choice
        return result, slot.text


@dataclass(slots=True)
class _Job:
    """One policy over one set of slots, between detection and classification."""

    policy: Policy
    action: str
    side: str
    slots: list[Slot]
    scope: str
    shadow: bool
    choice: int | None = None
    context: str = ""
    labels: list[str] = field(default_factory=list)
    redacted: bool = False


def _action(ref: PolicyRef, policy: Policy) -> str:
    return ref.action or policy.action
