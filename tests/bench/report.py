"""Render scenario results as Markdown (pasteable into notes and deploy/SIZING.md)."""

from __future__ import annotations

from typing import Any

from tests.bench.harness import Scenario


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("PASS" if ok else "FAIL")


def render_scenario(sc: Scenario) -> str:
    parts = [f"## {sc.title}", ""]
    parts += [f"- {note}" for note in sc.notes]
    for table in sc.tables:
        parts += ["", f"{table['title']}:", "", markdown_table(table["columns"], table["rows"])]
    return "\n".join(parts)


def render_checks(scenarios: list[Scenario]) -> str:
    rows = [
        [sc.name, c["check"], c["value"], c["target"], verdict(c["ok"])]
        for sc in scenarios
        for c in sc.checks
    ]
    return "## Targets\n\n" + markdown_table(["scenario", "check", "value", "target", ""], rows)


def render(header: list[str], scenarios: list[Scenario], failures: dict[str, str]) -> str:
    parts = ["# Safeguard Gateway benchmark", "", *header]
    for sc in scenarios:
        parts += ["", render_scenario(sc)]
    if failures:
        parts += ["", "## Scenarios that did not complete", ""]
        parts += [f"- {name}: {why}" for name, why in failures.items()]
    parts += ["", render_checks(scenarios)]
    return "\n".join(parts) + "\n"
