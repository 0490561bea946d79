"""Guard decisions: run a side's policies over text pieces and decide what happens.

Per policy: pattern detectors first (cheap, synchronous; they redact, or flag without a
model call), then the classifier through the verdict cache. All enforced policies of a
side run in parallel; shadow policies run in the background and never change anything.
A policy of `scope: per_message` (the default) classifies every piece on its own, so a
conversation's earlier turns are cache hits and only new text costs a model call.

The engine does no telemetry: what it did goes to its observers (proxy/guard/observers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.config import PolicyRef, Side
from proxy.guard.cache import VerdictCache
from proxy.guard.detectors import find_spans, redact
from proxy.guard.observers import GuardObserver
from proxy.guard.safeguard import ClassifierError, SafeguardClient, Verdict, errored
from proxy.policies import Policy
from proxy.surfaces.text import Edits, Path, Piece, Slot, render

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


RANK = {name: rank for rank, name in enumerate(SEVERITY)}


def worse(a: str, b: str) -> str:
    """The more severe of two decisions."""
    return a if RANK[a] >= RANK[b] else b


def decide(outcomes: Sequence[Outcome], fail: str) -> str:
    """allow | annotate | redact | block, or error when the guard is unusable and fails closed."""
    worst = "allow"
    for outcome in outcomes:
        effect = outcome.effect
        if RANK[effect] > RANK[worst] and not (effect == "error" and fail == "open"):
            worst = effect
    return worst


class SideResult:
    """One side's outcomes, its shadow verdicts still running, and its redactions (new
    text by body path). A plain class: a dataclass's factories cost a guarded request
    ~10k instructions per side."""

    __slots__ = ("edits", "outcomes", "shadow")

    def __init__(
        self,
        outcomes: list[Outcome] | None = None,
        shadow: list[asyncio.Task[Outcome | None]] | None = None,
        edits: dict[Path, str] | None = None,
    ) -> None:
        self.outcomes = [] if outcomes is None else outcomes
        self.shadow = [] if shadow is None else shadow
        self.edits = {} if edits is None else edits

    def decision(self, fail: str) -> str:
        return decide(self.outcomes, fail)

    def blocked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.effect == "block"]

    def filter_results(self) -> dict[str, dict[str, Any]]:
        return {o.policy.id: o.filter_result() for o in self.outcomes if not o.verdict.error}


class Guard:
    def __init__(
        self,
        classifier: SafeguardClient,
        cache: VerdictCache,
        observers: Sequence[GuardObserver] = (),
    ) -> None:
        self.classifier = classifier
        self.cache = cache
        self.observers = tuple(observers)
        # Each observer implements the hooks it needs (proxy/guard/observers.py).
        self._on_classified = [o.classified for o in observers if hasattr(o, "classified")]
        self._on_judged = [o.judged for o in observers if hasattr(o, "judged")]

    async def verdict(self, policy: Policy, content: str, side: str) -> Verdict:
        """The model's verdict, cached; a classifier failure becomes an error verdict."""
        started = time.time_ns()
        verdict = self.cache.lookup(policy, content)
        if verdict is None:
            try:
                verdict = await self.cache.get_or_classify(
                    policy, content, lambda: self.classifier.classify(policy, content)
                )
            except ClassifierError as exc:
                verdict = errored(policy, exc, (time.time_ns() - started) / 1e6)
        for classified in self._on_classified:
            classified(policy, self.classifier.model, side, verdict, started)
        return verdict

    def _hit(self, policy: Policy, content: str, side: str) -> Verdict | None:
        """A cached verdict, reported to the observers, without a coroutine (the hot path)."""
        verdict = self.cache.lookup(policy, content)
        if verdict is not None and self._on_classified:
            started = time.time_ns()
            for classified in self._on_classified:
                classified(policy, self.classifier.model, side, verdict, started)
        return verdict

    @staticmethod
    def _detect(job: _Job, edits: dict[Path, str]) -> None:
        """Pattern detectors, synchronously: redact policies rewrite their slots' text in
        `edits` here, before any policy's text is rendered for the model (shadow policies
        only look)."""
        for unit in job.units if job.policy.detectors else ():
            for piece in unit:
                for slot in piece.slots:
                    text = edits.get(slot.path, slot.text)
                    spans = find_spans(text, job.policy.detectors)
                    if not spans:
                        continue
                    job.labels.extend(s.label for s in spans)
                    if job.action == "redact" and not job.shadow:
                        edits[slot.path] = redact(text, spans)
                        job.redacted = True

    def _settle(self, job: _Job, edits: Edits) -> Outcome | _Pending | None:
        """Synchronously, what can be known now: the outcome (detector triage, or every
        unit a cache hit), nothing to read (None), or the units the classifier must judge."""
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
            return self._judged(job.outcome(verdict))
        labelled = job.scope == "conversation"
        contents = [job.context + c for unit in job.units if (c := render(unit, labelled, edits))]
        if not contents:
            return None
        verdicts = [self._hit(policy, c, job.side) for c in contents]
        if None in verdicts:
            return _Pending(job, contents, verdicts)
        return self._outcome(job, verdicts)  # type: ignore[arg-type]

    async def _classify(self, pending: _Pending) -> Outcome:
        """The units the cache did not have, from the classifier in parallel."""
        job, verdicts = pending.job, pending.verdicts
        missing = [i for i, v in enumerate(verdicts) if v is None]
        fresh = await asyncio.gather(
            *(self.verdict(job.policy, pending.contents[i], job.side) for i in missing)
        )
        for i, verdict in zip(missing, fresh, strict=True):
            verdicts[i] = verdict
        return self._outcome(job, verdicts)  # type: ignore[arg-type]

    async def _judge(self, job: _Job, edits: Edits) -> Outcome | None:
        settled = self._settle(job, edits)
        return await self._classify(settled) if isinstance(settled, _Pending) else settled

    def _outcome(self, job: _Job, verdicts: list[Verdict]) -> Outcome:
        verdict = verdicts[0] if len(verdicts) == 1 else _worst(verdicts)
        if job.shadow:
            verdict = replace(verdict, shadow=True)
        labels = job.labels
        if job.redacted and not verdict.violation and not verdict.error:
            rationale = f"pattern detectors redacted: {', '.join(sorted(set(labels)))}"
            verdict = replace(verdict, violation=True, category=labels[0], rationale=rationale)
        return self._judged(job.outcome(verdict))

    def _judged(self, outcome: Outcome) -> Outcome:
        for judged in self._on_judged:
            judged(outcome)
        return outcome

    async def _run(self, enforced: list[_Job], shadow: list[_Job]) -> SideResult:
        edits: dict[Path, str] = {}
        for job in shadow:  # shadow jobs only look: they see the original text
            if job.policy.detectors:
                self._detect(job, {})
        for job in enforced:
            if job.policy.detectors:
                self._detect(job, edits)
        result = SideResult(edits=edits)
        if shadow:
            result.shadow = [asyncio.ensure_future(self._judge(job, {})) for job in shadow]
        settled = [self._settle(job, edits) for job in enforced]
        waiting = [s for s in settled if isinstance(s, _Pending)]
        if waiting:  # cache misses: to the classifier, all policies in parallel
            judged = iter(await asyncio.gather(*(self._classify(p) for p in waiting)))
            settled = [next(judged) if isinstance(s, _Pending) else s for s in settled]
        result.outcomes = [o for o in settled if o is not None]  # type: ignore[misc]
        return result

    async def check_request(
        self, side: Side, policies: Mapping[str, Policy], pieces: Sequence[Piece]
    ) -> SideResult:
        """The input side: each policy reads its scope of the request's pieces (and may
        redact them: the result's `edits`)."""

        def job(ref: PolicyRef, shadow: bool) -> _Job:
            policy = policies[ref.id]
            units = scoped(pieces, policy.scope)
            return _Job(policy, _action(ref, policy), "input", units, policy.scope, shadow)

        return await self._run(
            [job(ref, False) for ref in side.policies], [job(ref, True) for ref in side.shadow]
        )

    async def check_response(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        pieces: Sequence[Piece],
        context: str = "",
    ) -> SideResult:
        """The output side: every policy reads each piece (a choice's text, a tool call's
        arguments) on its own, and may redact it."""

        def jobs(refs: tuple[PolicyRef, ...], shadow: bool) -> list[_Job]:
            return [
                _Job(
                    policies[ref.id],
                    _action(ref, policies[ref.id]),
                    "output",
                    [[piece]],
                    "last_user",
                    shadow,
                    choice=piece.choice,
                    tool=piece.tool,
                    context=context,
                )
                for piece in pieces
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
        tool: str | None = None,
    ) -> tuple[SideResult, str]:
        """One piece of output text (a stream window, classified after `context`): the
        outcomes and the text as it may be released."""
        piece = Piece("assistant", (Slot(_TEXT, text),), tool=tool, choice=choice)
        result = await self.check_response(side, policies, [piece], context)
        return result, result.edits.get(_TEXT, text)


_TEXT: Path = ("text",)


def scoped(pieces: Sequence[Piece], scope: str) -> list[list[Piece]]:
    """What a policy of this scope reads, as units each classified on its own."""
    if scope == "per_message":
        return [[piece] for piece in pieces]
    if scope == "last_user":
        for piece in reversed(pieces):
            if piece.role == "user":
                return [[piece]]
        return []
    if scope == "assistant":
        return [[p for p in pieces if p.role == "assistant"]]
    return [list(pieces)]


def _worst(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for a policy over many pieces: an error first (the route's fail mode
    decides), else the first violation, else the last piece's (the newest turn)."""
    for verdict in verdicts:
        if verdict.error:
            return verdict
    for verdict in verdicts:
        if verdict.violation:
            return verdict
    return verdicts[-1]


class _Job:
    """One policy over units of pieces, between detection and classification (a plain
    class: built per policy per request on the hot path)."""

    __slots__ = (
        "action", "choice", "context", "labels", "policy", "redacted", "scope", "shadow",
        "side", "tool", "units",
    )  # fmt: skip

    def __init__(
        self,
        policy: Policy,
        action: str,
        side: str,
        units: list[list[Piece]],
        scope: str,
        shadow: bool,
        choice: int | None = None,
        tool: str | None = None,
        context: str = "",
    ) -> None:
        self.policy, self.action, self.side, self.units = policy, action, side, units
        self.scope, self.shadow, self.choice, self.tool = scope, shadow, choice, tool
        self.context = context
        self.labels: list[str] = []
        self.redacted = False

    def outcome(self, verdict: Verdict) -> Outcome:
        return Outcome(
            self.policy,
            self.action,
            self.side,
            verdict,
            redacted=self.redacted,
            choice=self.choice,
            tool=self.tool,
        )


@dataclass(slots=True)
class _Pending:
    """A job whose units are not all cached: `verdicts` has None where the model must judge."""

    job: _Job
    contents: list[str]
    verdicts: list[Verdict | None]


def _action(ref: PolicyRef, policy: Policy) -> str:
    return ref.action or policy.action
