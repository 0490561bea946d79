"""Who watches the guard: the engine emits what it did, observers turn it into spans and
metrics. A guard built without observers (as decision tests build it) does no telemetry.

`classified` fires once per classifier (or cache) verdict, with the wall-clock start in ns;
`judged` once per policy outcome, detector triage included. An observer implements only
the hooks it uses (the guard calls what is there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.guard.engine import Outcome
    from proxy.guard.safeguard import Verdict
    from proxy.policies import Policy


class GuardObserver(Protocol):  # either hook may be left out
    def classified(
        self, policy: Policy, model: str, side: str, verdict: Verdict, started_ns: int
    ) -> None: ...

    def judged(self, outcome: Outcome) -> None: ...


class SpanObserver:
    """A CLIENT span per classification (`chat {model}`) with its evaluation event. The
    classifier sends no trace context, so the span is made once the verdict is in."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry

    def classified(
        self, policy: Policy, model: str, side: str, verdict: Verdict, started_ns: int
    ) -> None:
        with self.telemetry.classification_span(policy.id, policy.version, model, side) as span:
            if span.is_recording():
                span.start_ns = started_ns  # the span covers the call, made after it
            self.telemetry.record_verdict(span, verdict)


class MetricsObserver:
    """Decisions, classifier latency, cache hits and errors per verdict."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def judged(self, outcome: Outcome) -> None:
        self.metrics.observe_verdict(outcome.verdict, outcome.side, outcome.effect)
