"""Pure scoring of a policy against a golden set: confusion matrix, precision, recall, F1,
accuracy, per-category results and latency percentiles.

A case the classifier could not answer (`predicted is None`) is counted as an error and
left out of every rate: it is neither a miss nor a safe verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Observation:
    expected: int  # 0 | 1
    predicted: int | None  # 0 | 1, None when the classifier errored
    expected_category: str | None = None
    predicted_category: str | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class CategoryResult:
    """Positive cases sharing one expected category."""

    category: str
    positives: int  # expected-violation cases in this category (errors included)
    scored: int  # of those, the ones the classifier answered
    detected: int  # flagged as violations
    matched: int  # flagged with the expected category
    errors: int

    @property
    def recall(self) -> float | None:
        return ratio(self.detected, self.scored)

    @property
    def agreement(self) -> float | None:
        """Share of detected cases whose reported category equals the expected one."""
        return ratio(self.matched, self.detected)

    def as_dict(self) -> dict:
        return {
            "category": self.category,
            "positives": self.positives,
            "scored": self.scored,
            "detected": self.detected,
            "recall": _round(self.recall),
            "category_matches": self.matched,
            "category_agreement": _round(self.agreement),
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class Metrics:
    cases: int
    errors: int
    tp: int
    fp: int
    fn: int
    tn: int
    categories: tuple[CategoryResult, ...] = ()
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def scored(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float | None:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        # 2TP / (2TP + FP + FN): the harmonic mean of precision and recall, and 0 (not
        # undefined) when there were positives to find or flag but none was right.
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float | None:
        return ratio(self.tp + self.tn, self.scored)

    @property
    def category_agreement(self) -> float | None:
        matched = sum(c.matched for c in self.categories)
        return ratio(matched, sum(c.detected for c in self.categories))

    def latency(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)

    def as_dict(self) -> dict:
        return {
            "cases": self.cases,
            "scored": self.scored,
            "errors": self.errors,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
            "accuracy": _round(self.accuracy),
            "category_agreement": _round(self.category_agreement),
            "categories": [c.as_dict() for c in self.categories],
            "latency_ms": {
                "p50": _round(self.latency(50), 2),
                "p95": _round(self.latency(95), 2),
                "max": _round(max(self.latencies_ms), 2) if self.latencies_ms else None,
            },
        }


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when the rate is undefined (nothing to divide)."""
    return numerator / denominator if denominator else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def same_category(expected: str | None, predicted: str | None) -> bool:
    """Case-insensitive match; a finer code agrees with its parent ("H2.f" is in "H2")."""
    if expected is None or predicted is None:
        return False
    want, got = expected.strip().casefold(), predicted.strip().casefold()
    return got == want or got.startswith(want + ".")


def outcome(obs: Observation) -> str:
    """TP | FP | FN | TN | error."""
    if obs.predicted is None:
        return "error"
    if obs.expected:
        return "TP" if obs.predicted else "FN"
    return "FP" if obs.predicted else "TN"


def compute(observations: Sequence[Observation]) -> Metrics:
    counts = {"TP": 0, "FP": 0, "FN": 0, "TN": 0, "error": 0}
    by_category: dict[str, list[Observation]] = {}
    latencies: list[float] = []
    for obs in observations:
        counts[outcome(obs)] += 1
        if obs.predicted is not None and obs.latency_ms is not None:
            latencies.append(obs.latency_ms)
        if obs.expected and obs.expected_category:
            by_category.setdefault(obs.expected_category, []).append(obs)
    categories = tuple(
        CategoryResult(
            category=name,
            positives=len(group),
            scored=sum(o.predicted is not None for o in group),
            detected=sum(o.predicted == 1 for o in group),
            matched=sum(
                o.predicted == 1 and same_category(o.expected_category, o.predicted_category)
                for o in group
            ),
            errors=sum(o.predicted is None for o in group),
        )
        for name, group in sorted(by_category.items())
    )
    return Metrics(
        cases=len(observations),
        errors=counts["error"],
        tp=counts["TP"],
        fp=counts["FP"],
        fn=counts["FN"],
        tn=counts["TN"],
        categories=categories,
        latencies_ms=tuple(latencies),
    )


def flipped(before: Sequence[int | None], after: Sequence[int | None]) -> list[int]:
    """Positions where both runs answered and their verdicts differ."""
    if len(before) != len(after):
        raise ValueError("both runs must cover the same cases")
    return [
        i
        for i, (a, b) in enumerate(zip(before, after, strict=True))
        if a is not None and b is not None and a != b
    ]
