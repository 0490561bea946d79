"""What `policy test` and `policy lint` print: human text, one JSON document, progress.

Pure renderers over runner and lint results, plus the stderr progress bar (drawn only
when stderr is a terminal).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from proxy.policies import Policy
from proxy.workbench.cases import Case
from proxy.workbench.lint import LintReport
from proxy.workbench.metrics import Metrics, flipped, outcome
from proxy.workbench.runner import Outcome, Run

SNIPPET = 100
REASONING = 240
RATIONALE = 400


@dataclass(frozen=True, slots=True)
class Context:
    """Where a test run's inputs came from, for the report header."""

    cases_path: str
    base_url: str
    model: str
    reasoning_effort: str
    min_f1: float | None = None


def snippet(text: str | None, limit: int = SNIPPET) -> str:
    """One line, at most `limit` characters, with an ellipsis when cut."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _policy_doc(policy: Policy) -> dict:
    return {"id": policy.id, "version": policy.version, "path": policy.path}


def _name(policy: Policy) -> str:
    return f"{policy.id} (v {policy.version})"


def gate_failures(runs: Sequence[Run], min_f1: float | None) -> list[tuple[Run, Metrics]]:
    """Runs whose F1 is below the threshold; an undefined F1 fails a gate too."""
    if min_f1 is None:
        return []
    failing = []
    for run in runs:
        metrics = run.metrics
        if metrics.f1 is None or metrics.f1 < min_f1:
            failing.append((run, metrics))
    return failing


def flips(before: Run, after: Run) -> list[tuple[Outcome, Outcome]]:
    positions = flipped(
        [o.predicted for o in before.outcomes], [o.predicted for o in after.outcomes]
    )
    return [(before.outcomes[i], after.outcomes[i]) for i in positions]


# ---------------------------------------------------------------- JSON


def _result_doc(o: Outcome) -> dict:
    obs = o.observation()
    return {
        "index": o.case.index,
        "line": o.case.line,
        "expected": o.case.label,
        "expected_category": o.case.category,
        "predicted": o.predicted,
        "category": o.verdict.category,
        "outcome": outcome(obs),
        "correct": o.correct,
        "latency_ms": round(o.verdict.latency_ms, 2),
        "rationale": o.verdict.rationale,
        "error": o.verdict.error,
    }


def _disagreement_doc(o: Outcome) -> dict:
    return {
        "index": o.case.index,
        "line": o.case.line,
        "content": o.case.content,
        "expected": o.case.label,
        "expected_category": o.case.category,
        "predicted": o.predicted,
        "category": o.verdict.category,
        "rationale": o.verdict.rationale,
        "reasoning": o.verdict.reasoning,
    }


def _error_doc(o: Outcome) -> dict:
    return {
        "index": o.case.index,
        "line": o.case.line,
        "content": o.case.content,
        "error": o.verdict.error,
    }


def _run_doc(run: Run) -> dict:
    return {
        "policy": _policy_doc(run.policy),
        "metrics": run.metrics.as_dict(),
        "disagreements": [_disagreement_doc(o) for o in run.disagreements],
        "errors": [_error_doc(o) for o in run.errors],
        "results": [_result_doc(o) for o in run.outcomes],
    }


def results_document(runs: Sequence[Run], cases: Sequence[Case], ctx: Context) -> dict:
    """The `--json` document: the tested policy at top level, `compare` for the other."""
    doc = {
        "cases": {
            "path": ctx.cases_path,
            "count": len(cases),
            "positives": sum(c.label for c in cases),
            "negatives": sum(not c.label for c in cases),
        },
        "classifier": {
            "base_url": ctx.base_url,
            "model": ctx.model,
            "reasoning_effort": ctx.reasoning_effort,
        },
        **_run_doc(runs[0]),
        "compare": None,
        "min_f1": ctx.min_f1,
        "passed": None if ctx.min_f1 is None else not gate_failures(runs, ctx.min_f1),
    }
    if len(runs) > 1:
        doc["compare"] = {
            **_run_doc(runs[1]),
            "flipped": [
                {
                    "index": a.case.index,
                    "line": a.case.line,
                    "content": a.case.content,
                    "expected": a.case.label,
                    "before": a.predicted,
                    "after": b.predicted,
                    "rationale": b.verdict.rationale,
                    "reasoning": b.verdict.reasoning,
                }
                for a, b in flips(runs[0], runs[1])
            ],
        }
    return doc


# ---------------------------------------------------------------- text


def _header(cases: Sequence[Case], ctx: Context) -> list[str]:
    positives = sum(c.label for c in cases)
    return [
        f"cases       {ctx.cases_path}: {len(cases)} ({positives} violating, "
        f"{len(cases) - positives} safe)",
        f"classifier  {ctx.model} at {ctx.base_url}, reasoning effort {ctx.reasoning_effort}",
    ]


def _confusion(m: Metrics) -> list[str]:
    return [
        "confusion matrix   predicted 1   predicted 0",
        f"  expected 1       TP {m.tp:<10} FN {m.fn}",
        f"  expected 0       FP {m.fp:<10} TN {m.tn}",
    ]


def _categories(m: Metrics) -> list[str]:
    if not m.categories:
        return []
    width = max(8, *(len(c.category) for c in m.categories))
    lines = [
        "per category (cases expected to violate)",
        f"  {'category':<{width}}  cases  detected  recall  category agreement",
    ]
    for c in m.categories:
        agreement = f"{c.matched}/{c.detected} ({_fmt(c.agreement)})" if c.detected else "n/a"
        errors = f"  ({c.errors} errored)" if c.errors else ""
        lines.append(
            f"  {c.category:<{width}}  {c.positives:>5}  {c.detected:>8}  {_fmt(c.recall):>6}"
            f"  {agreement}{errors}"
        )
    return lines


def _label(value: int | None, category: str | None = None) -> str:
    if value is None:
        return "error"
    return f"{value} [{category}]" if value and category else str(value)


def _disagreements(run: Run) -> list[str]:
    items = run.disagreements
    if not items:
        return ["disagreements: none"]
    lines = [f"disagreements ({len(items)})"]
    for o in items:
        kind = "FN (missed)" if o.case.label else "FP (over-flagged)"
        expected = _label(o.case.label, o.case.category)
        got = _label(o.predicted, o.verdict.category)
        lines += [
            f"  #{o.case.index} (line {o.case.line})  {kind}  expected {expected}, got {got}",
            f"     content:   {snippet(o.case.content)}",
            f"     rationale: {snippet(o.verdict.rationale, RATIONALE) or '(none given)'}",
        ]
        if o.verdict.reasoning:
            lines.append(f"     reasoning: {snippet(o.verdict.reasoning, REASONING)}")
    return lines


def _errors(run: Run) -> list[str]:
    items = run.errors
    if not items:
        return []
    lines = [f"classifier errors ({len(items)} of {len(run.outcomes)} cases, not scored)"]
    lines += [
        f"  #{o.case.index} (line {o.case.line})  {snippet(o.verdict.error, 200)}" for o in items
    ]
    return lines


def render_test(runs: Sequence[Run], cases: Sequence[Case], ctx: Context) -> str:
    if len(runs) > 1:
        return render_compare(runs[0], runs[1], cases, ctx)
    run = runs[0]
    m = run.metrics
    lines = [f"policy      {_name(run.policy)}{'  ' + run.policy.path if run.policy.path else ''}"]
    lines += _header(cases, ctx)
    lines += [
        "",
        f"precision {_fmt(m.precision)}   recall {_fmt(m.recall)}   F1 {_fmt(m.f1)}"
        f"   accuracy {_fmt(m.accuracy)}   ({m.scored} scored, {m.errors} errored)",
        *_confusion(m),
        f"latency     p50 {_ms(m.latency(50))}   p95 {_ms(m.latency(95))}",
    ]
    for block in (_categories(m), _disagreements(run), _errors(run)):
        if block:
            lines += ["", *block]
    return "\n".join(lines)


def render_compare(a: Run, b: Run, cases: Sequence[Case], ctx: Context) -> str:
    ma, mb = a.metrics, b.metrics
    lines = [
        f"A  {_name(a.policy)}  {a.policy.path or ''}".rstrip(),
        f"B  {_name(b.policy)}  {b.policy.path or ''}".rstrip(),
    ]
    lines += _header(cases, ctx)
    lines += ["", f"{'':<16}{'A':>12}{'B':>12}{'B - A':>10}"]
    for name in ("precision", "recall", "f1", "accuracy"):
        va, vb = getattr(ma, name), getattr(mb, name)
        delta = f"{vb - va:+.3f}" if va is not None and vb is not None else ""
        label = "F1" if name == "f1" else name
        lines.append(f"{label:<16}{_fmt(va):>12}{_fmt(vb):>12}{delta:>10}")
    for name in ("tp", "fp", "fn", "tn", "errors"):
        va, vb = getattr(ma, name), getattr(mb, name)
        label = name.upper() if name != "errors" else "errors"
        lines.append(f"{label:<16}{va:>12}{vb:>12}{vb - va:>+10}")
    for q in (50, 95):
        lines.append(f"{'latency p' + str(q):<16}{_ms(ma.latency(q)):>12}{_ms(mb.latency(q)):>12}")
    categories = sorted({c.category for c in (*ma.categories, *mb.categories)})
    if categories:
        recall_a = {c.category: c.recall for c in ma.categories}
        recall_b = {c.category: c.recall for c in mb.categories}
        lines += ["", "recall per category"]
        lines += [
            f"  {name:<14}{_fmt(recall_a.get(name)):>12}{_fmt(recall_b.get(name)):>12}"
            for name in categories
        ]
    changed = flips(a, b)
    lines += [
        "",
        f"flipped verdicts, A -> B ({len(changed)})" if changed else "flipped verdicts: none",
    ]
    for before, after in changed:
        fixed = "now correct" if after.correct else "now wrong"
        lines += [
            f"  #{before.case.index} (line {before.case.line})  expected "
            f"{_label(before.case.label, before.case.category)}: {before.predicted} -> "
            f"{after.predicted}  ({fixed})",
            f"     content:   {snippet(before.case.content)}",
            f"     rationale: {snippet(after.verdict.rationale, RATIONALE) or '(none given)'}",
        ]
    for tag, run in (("A", a), ("B", b)):
        block = _errors(run)
        if block:
            lines += ["", f"{tag}: {block[0]}", *block[1:]]
    return "\n".join(lines)


def lint_document(reports: Sequence[LintReport]) -> dict:
    return {
        "files": [r.as_dict() for r in reports],
        "errors": sum(r.errors for r in reports),
        "warnings": sum(r.warnings for r in reports),
    }


def render_lint(reports: Sequence[LintReport]) -> str:
    lines: list[str] = []
    for report in reports:
        for f in report.findings:
            lines.append(f"{report.path}:{f.line}: {f.level}: {f.message} [{f.code}]")
        if report.findings:
            lines.append(
                f"{report.path}: {report.errors} error(s), {report.warnings} warning(s), "
                f"~{report.tokens} tokens"
            )
        else:
            lines.append(f"{report.path}: ok, ~{report.tokens} tokens")
    return "\n".join(lines)


class ProgressBar:
    """`[#####-----] 12/40` redrawn in place on a terminal; call close() when done."""

    def __init__(self, stream: TextIO, label: str = "classifying", width: int = 30) -> None:
        self.stream, self.label, self.width = stream, label, width
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
