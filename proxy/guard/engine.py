"""Guard decisions: run a side's policies over text pieces and decide what happens.

Per policy: pattern detectors first (cheap, synchronous; they redact, or flag without a
model call), then the classifier through the verdict cache. All enforced policies of a
side run in parallel; shadow policies run in the background and never change anything.
A policy of `scope: per_message` (the default) classifies every piece on its own, so a
conversation's earlier turns are cache hits and only new text costs a model call.

Cached verdicts are read synchronously: `judge_request`/`judge_response` return the
side's result itself when nothing is left to ask (no coroutine, no task: the common case
of a repeated conversation), else an awaitable of it; `check_*` are the awaitable forms.

The engine does no telemetry: what it did goes to its observers (proxy/guard/observers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, replace

from proxy.config import PolicyRef, Side
from proxy.guard.cache import VerdictCache
from proxy.guard.detectors import find_spans, redact
from proxy.guard.observers import GuardObserver

# The outcome values live in proxy.guard.outcome; imported from here too.
from proxy.guard.outcome import RANK as RANK
from proxy.guard.outcome import SEVERITY as SEVERITY
from proxy.guard.outcome import Outcome as Outcome
from proxy.guard.outcome import SideResult as SideResult
from proxy.guard.outcome import decide as decide
from proxy.guard.outcome import worse as worse
from proxy.guard.safeguard import ClassifierError, SafeguardClient, Verdict, errored
from proxy.openai_api import Slot as LegacySlot
from proxy.policies import Policy
from proxy.surfaces.text import Edits, Path, Piece, Slot, render


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
        try:
            verdict = await self.cache.get_or_classify(
                policy, content, lambda: self.classifier.classify(policy, content)
            )
        except ClassifierError as exc:
            verdict = errored(policy, exc, (time.time_ns() - started) / 1e6)
        self._classified(policy, side, verdict, started)
        return verdict

    def _classified(self, policy: Policy, side: str, verdict: Verdict, started: int) -> None:
        for classified in self._on_classified:
            classified(policy, self.classifier.model, side, verdict, started)

    @staticmethod
    def _detect(job: _Job, edits: dict[Path, str]) -> None:
        """Pattern detectors, synchronously: redact policies rewrite their slots' text in
        `edits` here, before any policy's text is rendered for the model (shadow policies
        only look)."""
        for unit in job.units:
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
            return self._outcome(job, verdict)
        labelled, context = job.scope == "conversation", job.context
        lookup, report = self.cache.lookup, self._on_classified
        contents: list[str] = []
        verdicts: list[Verdict | None] = []
        complete = True
        for unit in job.units:
            # One piece read plainly (an answer's choice, a window) is its own text.
            content = (
                unit[0].text(edits)
                if len(unit) == 1 and not labelled
                else render(unit, labelled, edits)
            )
            if not content:
                continue
            if context:
                content = context + content
            verdict = lookup(policy, content)
            if verdict is None:
                complete = False
            elif report:
                self._classified(policy, job.side, verdict, time.time_ns())
            contents.append(content)
            verdicts.append(verdict)
        if not complete:
            return _Pending(job, contents, verdicts)
        if not verdicts:
            return None
        return self._outcome(job, _worst(verdicts))  # type: ignore[arg-type]

    async def _classify(self, pending: _Pending) -> Outcome:
        """The units the cache did not have, from the classifier in parallel."""
        job, verdicts = pending.job, pending.verdicts
        missing = [i for i, v in enumerate(verdicts) if v is None]
        if len(missing) == 1:  # no task for a single call
            (i,) = missing
            verdicts[i] = await self.verdict(job.policy, pending.contents[i], job.side)
        else:
            fresh = await asyncio.gather(
                *(self.verdict(job.policy, pending.contents[i], job.side) for i in missing)
            )
            for i, verdict in zip(missing, fresh, strict=True):
                verdicts[i] = verdict
        return self._outcome(job, _worst(verdicts))  # type: ignore[arg-type]

    async def _judge(self, job: _Job, edits: Edits) -> Outcome | None:
        settled = self._settle(job, edits)
        if type(settled) is _Pending:
            return await self._classify(settled)
        return settled  # type: ignore[return-value]

    def _outcome(self, job: _Job, verdict: Verdict) -> Outcome:
        if job.shadow:
            verdict = replace(verdict, shadow=True)
        if job.redacted and not verdict.violation and not verdict.error:
            labels = job.labels
            rationale = f"pattern detectors redacted: {', '.join(sorted(set(labels)))}"
            verdict = replace(verdict, violation=True, category=labels[0], rationale=rationale)
        outcome = Outcome(
            job.policy, job.action, job.side, verdict, job.redacted, job.choice, job.tool
        )
        for judged in self._on_judged:
            judged(outcome)
        return outcome

    def _run(self, enforced: list[_Job], shadow: list[_Job]) -> SideResult | Awaitable[SideResult]:
        """Detectors, then every cached verdict synchronously: the side's result when
        nothing is left to ask, else an awaitable of it (cache misses go to the classifier,
        all policies in parallel)."""
        edits: dict[Path, str] = {}
        for job in shadow:  # shadow jobs only look: they see the original text
            if job.policy.detectors:
                self._detect(job, {})
        for job in enforced:
            if job.policy.detectors:
                self._detect(job, edits)
        result = SideResult(None, None, edits)
        if shadow:
            result.shadow = [asyncio.ensure_future(self._judge(job, {})) for job in shadow]
        outcomes = result.outcomes
        waiting: list[_Pending] = []
        for job in enforced:
            settled = self._settle(job, edits)
            if settled is None:
                continue
            if type(settled) is _Pending:
                waiting.append(settled)
            outcomes.append(settled)  # type: ignore[arg-type]  # a _Pending: filled in below
        return self._wait(result, waiting) if waiting else result

    async def _wait(self, result: SideResult, waiting: list[_Pending]) -> SideResult:
        if len(waiting) == 1:  # no task for a single policy
            judged = iter((await self._classify(waiting[0]),))
        else:
            judged = iter(await asyncio.gather(*map(self._classify, waiting)))
        result.outcomes = [next(judged) if type(o) is _Pending else o for o in result.outcomes]
        return result

    def judge_request(
        self, side: Side, policies: Mapping[str, Policy], pieces: Sequence[Piece]
    ) -> SideResult | Awaitable[SideResult]:
        """The input side: each policy reads its scope of the request's pieces (and may
        redact them: the result's `edits`). The result itself when every verdict was
        cached (no coroutine, no task), else an awaitable of it."""
        enforced = [_input_job(ref, policies, pieces, False) for ref in side.policies]
        shadow = (
            [_input_job(ref, policies, pieces, True) for ref in side.shadow] if side.shadow else []
        )
        return self._run(enforced, shadow)

    def judge_response(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        pieces: Sequence[Piece],
        context: str = "",
    ) -> SideResult | Awaitable[SideResult]:
        """The output side: every policy reads each piece (a choice's text, a tool call's
        arguments) on its own, and may redact it. Synchronous on cache hits, as above."""
        enforced = _output_jobs(side.policies, policies, pieces, context, False)
        shadow = _output_jobs(side.shadow, policies, pieces, context, True) if side.shadow else []
        return self._run(enforced, shadow)

    async def check_request(
        self, side: Side, policies: Mapping[str, Policy], pieces: Sequence[Piece]
    ) -> SideResult:
        return await resolved(self.judge_request(side, policies, pieces))

    async def check_response(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        pieces: Sequence[Piece],
        context: str = "",
    ) -> SideResult:
        return await resolved(self.judge_response(side, policies, pieces, context))

    async def check_completion(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        choices: Sequence[list[LegacySlot]],
        context: str = "",
    ) -> SideResult:
        """In-place slots (the MCP relay's): each choice judged as one piece, redactions
        written back into the slots, outcomes numbered by choice."""
        pieces = [
            Piece("assistant", tuple(Slot((i, n), s.text) for n, s in enumerate(slots)), choice=i)
            for i, slots in enumerate(choices)
        ]
        result = await self.check_response(side, policies, pieces, context)
        for (i, n), text in result.edits.items():  # type: ignore[misc]
            choices[i][n].text = text
        return result

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


async def resolved(result: SideResult | Awaitable[SideResult]) -> SideResult:
    """A `judge_*` result, awaited if it has to be."""
    return result if type(result) is SideResult else await result  # type: ignore[misc]


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


def _input_job(
    ref: PolicyRef, policies: Mapping[str, Policy], pieces: Sequence[Piece], shadow: bool
) -> _Job:
    policy = policies[ref.id]
    units = scoped(pieces, policy.scope)
    return _Job(policy, ref.action or policy.action, "input", units, policy.scope, shadow)


def _output_jobs(
    refs: tuple[PolicyRef, ...],
    policies: Mapping[str, Policy],
    pieces: Sequence[Piece],
    context: str,
    shadow: bool,
) -> list[_Job]:
    return [
        _Job(
            policies[ref.id],
            ref.action or policies[ref.id].action,
            "output",
            [[piece]],
            "last_user",
            shadow,
            piece.choice,
            piece.tool,
            context,
        )
        for piece in pieces
        for ref in refs
    ]


def _worst(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for a policy over many pieces: an error first (the route's fail mode
    decides), else the first violation, else the last piece's (the newest turn)."""
    if len(verdicts) == 1:
        return verdicts[0]
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


@dataclass(slots=True)
class _Pending:
    """A job whose units are not all cached: `verdicts` has None where the model must judge."""

    job: _Job
    contents: list[str]
    verdicts: list[Verdict | None]
