"""Server-rendered SVG charts (pure functions; no script, no inline style: the console's
Content-Security-Policy allows neither). Colours come from presentation attributes and
CSS classes in console.css. Every text placed in a chart is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

LABELS = ("violation", "safe", "error")
W, H, PAD_L, PAD_B, PAD_T = 720, 200, 44, 24, 10


def _hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%m-%d %H:00")


def _frame(title: str, body: list[str], top: str, hours: Sequence[int]) -> Markup:
    plot_h = H - PAD_B - PAD_T
    axis = [
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{W}" y2="{PAD_T + plot_h}"/>',
        f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">{top}</text>',
        f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + plot_h}" text-anchor="end">0</text>',
    ]
    if hours:
        axis.append(f'<text class="tick" x="{PAD_L}" y="{H - 6}">{_hour(hours[0])} UTC</text>')
        axis.append(
            f'<text class="tick" x="{W}" y="{H - 6}" text-anchor="end">{_hour(hours[-1])}</text>'
        )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}"'
        f"><title>{escape(title)}</title>" + "".join(axis + body) + "</svg>"
    )


def hours_between(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


def stacked_bars(
    title: str, hourly: Mapping[int, Mapping[str, int]], hours: Sequence[int]
) -> Markup:
    """Verdicts per hour, stacked by label (violation, safe, error)."""
    peak = max((sum(hourly.get(h, {}).values()) for h in hours), default=0) or 1
    plot_w, plot_h = W - PAD_L, H - PAD_B - PAD_T
    step = plot_w / max(1, len(hours))
    bars = []
    for i, hour in enumerate(hours):
        cell = hourly.get(hour, {})
        y = PAD_T + plot_h
        for label in (*LABELS, *sorted(set(cell) - set(LABELS))):
            count = cell.get(label, 0)
            if not count:
                continue
            height = count / peak * plot_h
            y -= height
            bars.append(
                f'<rect class="bar {escape(label)}" x="{PAD_L + i * step + 1:.1f}" y="{y:.1f}"'
                f' width="{max(step - 2, 1):.1f}" height="{height:.1f}">'
                f"<title>{_hour(hour)}: {count} {escape(label)}</title></rect>"
            )
    return _frame(title, bars, str(peak), hours)


def rate_line(title: str, points: Mapping[int, tuple[int, int]], hours: Sequence[int]) -> Markup:
    """Agreement rate per hour (agreeing / compared), 0-100 %, hours without data skipped."""
    plot_w, plot_h = W - PAD_L, H - PAD_B - PAD_T
    step = plot_w / max(1, len(hours))
    coords, dots = [], []
    for i, hour in enumerate(hours):
        agree, compared = points.get(hour, (0, 0))
        if not compared:
            continue
        rate = agree / compared
        x, y = PAD_L + (i + 0.5) * step, PAD_T + (1 - rate) * plot_h
        coords.append(f"{x:.1f},{y:.1f}")
        dots.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
            f"<title>{_hour(hour)}: {rate:.1%} of {compared}</title></circle>"
        )
    line = [f'<polyline class="line" points="{" ".join(coords)}"/>'] if coords else []
    return _frame(title, line + dots, "100%", hours)
