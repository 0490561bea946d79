"""Golden sets: labeled cases for `policy test`, as JSON lines or CSV.

JSON lines: one object per line, `{"content": str, "label": 0|1, "category"?: str}`.
CSV: a header row naming `content`, `label` and optionally `category` (any order, any
case, extra columns ignored). Every problem is reported with the file and line number.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

_TRUE = ("1", "true", "violation", "yes")
_FALSE = ("0", "false", "safe", "no")


class CasesError(ValueError):
    """A golden set that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Case:
    index: int  # 1-based position in the golden set
    line: int  # line in the file where the case starts
    content: str
    label: int  # 1 = violates the policy, 0 = safe
    category: str | None = None


def parse_label(value: object) -> int:
    """0/1, true/false, "0"/"1", "violation"/"safe" -> 0|1; anything else raises ValueError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    raise ValueError(f"label must be 0 or 1, got {value!r}")


def _category(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"category must be a string, got {value!r}")
    text = str(value).strip()
    return text or None


def _case(index: int, line: int, content: object, label: object, category: object) -> Case:
    if not isinstance(content, str):
        raise ValueError(f"content must be a string, got {type(content).__name__}")
    if not content.strip():
        raise ValueError("content is empty")
    return Case(index, line, content, parse_label(label), _category(category))


def parse_jsonl(text: str, *, where: str = "<cases>") -> list[Case]:
    if text.lstrip().startswith("["):
        raise CasesError(f"{where}:1: a JSON array; write one JSON object per line (JSON lines)")
    cases: list[Case] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CasesError(f"{where}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise CasesError(f"{where}:{number}: expected a JSON object per line")
        missing = [key for key in ("content", "label") if key not in item]
        if missing:
            raise CasesError(f"{where}:{number}: missing {' and '.join(map(repr, missing))}")
        try:
            cases.append(
                _case(len(cases) + 1, number, item["content"], item["label"], item.get("category"))
            )
        except ValueError as exc:
            raise CasesError(f"{where}:{number}: {exc}") from None
    return cases


def parse_csv(text: str, *, where: str = "<cases>") -> list[Case]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        while not header:
            header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise CasesError(f"{where}:{reader.line_num}: {exc}") from None
    header_line = reader.line_num
    columns = [name.strip().lower() for name in header]
    missing = [name for name in ("content", "label") if name not in columns]
    if missing:
        raise CasesError(
            f"{where}:{header_line}: the header must name the columns content,label[,category]"
            f" (missing {', '.join(missing)}; got {', '.join(header)})"
        )
    at = {name: columns.index(name) for name in ("content", "label", "category") if name in columns}
    cases: list[Case] = []
    last = header_line
    while True:
        start = last + 1  # a quoted field may span lines: report where the row begins
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CasesError(f"{where}:{start}: {exc}") from None
        last = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CasesError(
                f"{where}:{start}: expected {len(header)} fields like the header, got {len(row)}"
                " (quote fields that contain commas)"
            )
        category = row[at["category"]] if "category" in at else None
        try:
            cases.append(
                _case(len(cases) + 1, start, row[at["content"]], row[at["label"]], category)
            )
        except ValueError as exc:
            raise CasesError(f"{where}:{start}: {exc}") from None
    return cases


def _looks_like_jsonl(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix in (".csv", ".tsv"):
        return False
    return text.lstrip().startswith("{")


def load_cases(path: str | Path) -> list[Case]:
    """Read a golden set; JSON lines for .jsonl/.ndjson/.json, CSV for .csv, else sniffed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CasesError(f"{path}: cannot read the cases file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CasesError(f"{path}:{line}: not UTF-8 text") from None
    if _looks_like_jsonl(path, text):
        cases = parse_jsonl(text, where=str(path))
    else:
        cases = parse_csv(text, where=str(path))
    if not cases:
        raise CasesError(f"{path}: no cases (expected JSON lines or CSV content,label[,category])")
    return cases
