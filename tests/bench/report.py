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


SIZING_ROWS = (  # (scenario, summary key, label)
    ("core", "gateway_audit@c32", "pass-through, no policies, audit on (default)"),
    ("core", "gateway@c32", "pass-through, no policies, audit off"),
    ("guard", "miss@c32", "1 input + 1 output policy, cache miss (0 ms classifier)"),
    ("guard", "hit@c32", "1 input + 1 output policy, cache hit"),
    ("guard", "s_miss@c32", "streaming 100 tokens, window mode, 1 input + 1 output policy"),
)


def render_sizing(scenarios: list[Scenario]) -> str:
    """One gateway worker at c=32, in the shape of deploy/SIZING.md's table."""
    by_name = {sc.name: sc for sc in scenarios}
    rows = []
    for name, key, label in SIZING_ROWS:
        s = by_name[name].raw.get("summary", {}).get(key) if name in by_name else None
        if not s:
            continue
        per_core = 1e6 / s["cpu_us_per_req"] if s["cpu_us_per_req"] else None
        rows.append(
            [label, f"{s['rps']:,.0f}", f"{s['p50_ms']:.1f} ms", f"{s['p99_ms']:.1f} ms",
             f"{s['cpu_pct']:.0f}%", f"{s['cpu_us_per_req']:,.0f}",
             "-" if per_core is None else f"{per_core:,.0f}"]
        )  # fmt: skip
    if not rows:
        return ""
    note = (
        "One worker process, 32 concurrent clients, audit off unless stated, traces off. "
        "CPU = the gateway worker process and its recorder process (100% = one core); "
        "req/s per core = 1e6 / CPU us per request, the CPU-bound capacity, steadier than "
        "req/s on a shared host."
    )
    columns = ["scenario (32 concurrent clients)", "req/s per worker", "p50", "p99", "CPU",
               "CPU us/req", "req/s per core"]  # fmt: skip
    return (
        "## Per-worker figures (for deploy/SIZING.md)\n\n"
        + note
        + "\n\n"
        + markdown_table(columns, rows)
    )


def render(header: list[str], scenarios: list[Scenario], failures: dict[str, str]) -> str:
    parts = ["# Safeguard Gateway benchmark", "", *header]
    for sc in scenarios:
        parts += ["", render_scenario(sc)]
    if sizing := render_sizing(scenarios):
        parts += ["", sizing]
    if failures:
        parts += ["", "## Scenarios that did not complete", ""]
        parts += [f"- {name}: {why}" for name, why in failures.items()]
    parts += ["", render_checks(scenarios)]
    return "\n".join(parts) + "\n"
