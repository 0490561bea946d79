"""A guard's outcomes as values: one policy's verdict and its effect, one side's result,
and how severe a decision is. Read by the decision core, metrics, headers and the audit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from proxy.guard.safeguard import Verdict
from proxy.policies import Policy
from proxy.surfaces.text import Path

SEVERITY = ("allow", "annotate", "redact", "error", "block")


class Outcome:
    """One policy's verdict on one side (one choice, for output) and what it does. A plain
    class, its effect worked out once: read by the decision, the metrics, the annotations
    and the response headers."""

    __slots__ = ("action", "choice", "effect", "policy", "redacted", "side", "tool", "verdict")

    def __init__(
        self,
        policy: Policy,
        action: str,  # the effective action: the route's override, else the policy's own
        side: str,
        verdict: Verdict,
        redacted: bool = False,
        choice: int | None = None,
        tool: str | None = None,  # output: the tool whose call arguments this verdict is on
    ) -> None:
        self.policy, self.action, self.side, self.verdict = policy, action, side, verdict
        self.redacted, self.choice, self.tool = redacted, choice, tool
        if verdict.error:
            self.effect = "error"
        elif redacted:
            self.effect = "redact"
        elif not verdict.violation:
            self.effect = "allow"
        else:
            # A redact policy the model still flags after its patterns ran has no span to cut.
            self.effect = _FLAGGED.get(action, "annotate")

    def __repr__(self) -> str:
        return (
            f"Outcome(policy={self.policy.id!r}, action={self.action!r}, side={self.side!r}, "
            f"verdict={self.verdict!r}, redacted={self.redacted}, choice={self.choice}, "
            f"tool={self.tool!r})"
        )

    def filter_result(self) -> dict[str, Any]:
        """Azure's per-category filter detail."""
        violation = self.verdict.violation
        result: dict[str, Any] = {
            "filtered": self.effect == "block" or self.effect == "redact",
            "detected": violation,
        }
        if violation:
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


_FLAGGED = {"block": "block", "log": "allow"}  # a violation's effect, by action (else annotate)
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
        results = {}
        for outcome in self.outcomes:  # a loop: a comprehension's frame costs more here
            if not outcome.verdict.error:
                results[outcome.policy.id] = outcome.filter_result()
        return results
