"""Policy lint: the structure the gpt-oss-safeguard policy guide recommends.

Checks, each finding carrying a level (error|warning), a file line and a fix:
front matter valid (the gateway's own parser), the five sections present and in order
(INSTRUCTIONS, DEFINITIONS, VIOLATES (1), SAFE (0), EXAMPLES), the output format stated
near the top and restated before EXAMPLES, labeled examples of both labels (4-6
recommended), estimated length against the 400-600 token sweet spot (error past ~10k),
and hedging words that blur a rule. Pure over the file's bytes; `lint_file` reads it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.policies import PolicyError, parse_policy, split_front_matter

SECTIONS: tuple[str, ...] = ("instructions", "definitions", "violates", "safe", "examples")
TITLES = {
    "instructions": "## INSTRUCTIONS",
    "definitions": "## DEFINITIONS",
    "violates": "## VIOLATES (1)",
    "safe": "## SAFE (0)",
    "examples": "## EXAMPLES",
}
PURPOSE = {
    "instructions": "what the model decides and the exact output format",
    "definitions": "the key terms the rules rely on",
    "violates": "the rules that make content a violation (label 1), with category codes",
    "safe": "what is allowed (label 0), near-misses above all",
    "examples": "4-6 short labeled boundary cases",
}
SWEET_SPOT = (400, 600)
MAX_TOKENS = 10_000
EXAMPLES_RECOMMENDED = (4, 6)
FORMAT_HINT = (
    'Return only JSON: {"violation": 0|1, "policy_category": "<code>", '
    '"rationale": "<one sentence>"}'
)

# Heading text (lower-cased, markdown emphasis stripped) -> section; first match wins.
_SECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("examples", re.compile(r"^(labell?ed |few-shot |boundary )?examples?\b")),
    (
        "safe",
        re.compile(
            r"^(safe|non-?violating|not (a )?violation|does not violate|doesn't violate"
            r"|allowed|acceptable|permitted|out of scope)\b|\(\s*0\s*\)|\blabel\s*0\b"
            r"|\b(non-?violating|not (a )?violat\w*|doesn't violate|does not violate)\b"
        ),
    ),
    (
        "violates",
        re.compile(
            r"^(violates|violating|violations?|violative|prohibited|disallowed|not allowed"
            r"|unsafe)\b|\(\s*1\s*\)|\blabel\s*1\b|\bviolat\w*"
        ),
    ),
    ("definitions", re.compile(r"^(definitions?|key terms|terms|terminology|glossary)\b")),
    ("instructions", re.compile(r"^(instructions?|task|goal|objective|purpose)\b")),
)
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# A line that is only a title, bold or in capitals, e.g. "**VIOLATES (1)**" or "EXAMPLES:".
_BARE_TITLE = re.compile(
    r"^\s*(\*\*|__)?([A-Za-z][A-Za-z0-9 ()/=-]{2,40}?)\s*:?\s*(\*\*|__)?\s*:?\s*$"
)
_FENCE = re.compile(r"^\s*(```|~~~)")

_FORMAT_MENTION = re.compile(
    r"""["']violation["']\s*:"""
    r"|\boutput format\b"
    r"|\b(answer|output|return|respond|reply|print|emit)\w*\b[^\n]*?\b(0|1)\b",
    re.I,
)
_EXAMPLE_LABEL = (
    re.compile(r"""["']violation["']\s*:\s*"?([01])"?(?![\d|./])""", re.I),
    re.compile(
        r"\b(?:answer|output|label|verdict|expected|result|classification|response|rating)"
        r"\s*\**\s*[:=]\s*\**\s*`?\"?([01])\"?`?(?![\d|./])",
        re.I,
    ),
    re.compile(r"(?:->|→|=>)\s*\**\s*`?\"?([01])\"?`?(?![\d|./])"),
)
VAGUE_WORDS: tuple[str, ...] = (
    "generally", "usually", "typically", "often", "sometimes", "may", "might", "could",
    "possibly", "probably", "likely", "perhaps", "maybe", "mostly", "frequently",
    "occasionally", "somewhat", "arguably", "normally", "in most cases", "tends to",
    "tend to", "kind of", "sort of", "more or less", "etc",
)  # fmt: skip
_VAGUE = re.compile(
    r"\b(" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in VAGUE_WORDS) + r")\b"
    r"(?!\s+\d)",  # "May 2024" is a month
    re.I,
)
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|`[^`\n]*`|<!--.*?-->")
_TOKEN_PIECE = re.compile(r"[A-Za-z]+|\d+|[^\W\d_]+|\n+|[ \t]+|[^\w\s]+")


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # error | warning
    line: int  # 1-based line in the file
    code: str  # stable id of the check, e.g. "missing-section"
    message: str

    def as_dict(self) -> dict:
        return {"level": self.level, "line": self.line, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class LintReport:
    path: str
    tokens: int
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warning" for f in self.findings)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "estimated_tokens": self.tokens,
            "errors": self.errors,
            "warnings": self.warnings,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass(frozen=True, slots=True)
class _Heading:
    index: int  # body line index
    level: int
    section: str | None


def estimate_tokens(text: str) -> int:
    """Rough o200k-style count: common words are one token, long words, digit runs (split
    in threes), punctuation runs and non-Latin script cost more. Within ~15% of a real
    tokenizer on English policy prose, which is all a length check needs."""
    count = 0
    for piece in _TOKEN_PIECE.findall(text):
        head = piece[0]
        if head == " " or head == "\t":
            count += len(piece) > 1  # one space merges into the next word
        elif head == "\n":
            count += 1
        elif head.isascii() and head.isalpha():
            count += 1 if len(piece) <= 10 else math.ceil(len(piece) / 6)
        elif head.isdigit():
            count += math.ceil(len(piece) / 3)
        elif head.isalpha():
            count += math.ceil(len(piece) / 2)
        else:
            count += math.ceil(len(piece) / 2)
    return count


def classify_heading(title: str) -> str | None:
    text = re.sub(r"[*_`]", "", title).strip().lower()
    for section, pattern in _SECTION_PATTERNS:
        if pattern.search(text):
            return section
    return None


def _headings(lines: list[str]) -> list[_Heading]:
    found: list[_Heading] = []
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        atx = _ATX.match(line)
        if atx:
            found.append(_Heading(i, len(atx.group(1)), classify_heading(atx.group(2))))
            continue
        bare = _BARE_TITLE.match(line)
        # Only an emphasised or all-capitals line counts, so prose like "Safe:" stays prose.
        if bare and (bare.group(1) or bare.group(2).upper() == bare.group(2)):
            section = classify_heading(bare.group(2))
            if section:
                found.append(_Heading(i, 2, section))
    return found


def _section_end(headings: list[_Heading], start: _Heading, total: int) -> int:
    for h in headings:
        if h.index > start.index and h.level <= start.level:
            return h.index
    return total


def _prose_lines(lines: list[str], skip: range) -> list[tuple[int, str]]:
    """Lines outside code fences, HTML comments and `skip`, with quotes and code cut out."""
    out: list[tuple[int, str]] = []
    in_fence = in_comment = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or i in skip:
            continue
        if in_comment:
            if "-->" not in line:
                continue
            line, in_comment = line.split("-->", 1)[1], False
        line = _QUOTED.sub(" ", line)
        if "<!--" in line:
            line, in_comment = line.split("<!--", 1)[0], True
        out.append((i, line))
    return out


def lint_source(source: bytes, *, name: str, path: str | None = None) -> LintReport:
    """Lint a policy file's bytes; `name` is its stem (the default policy id)."""
    where = path or name
    findings: list[Finding] = []

    def add(level: str, line: int, code: str, message: str) -> None:
        findings.append(Finding(level, line, code, message))

    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        add("error", line, "encoding", "the file is not UTF-8; save it as UTF-8 text")
        return LintReport(where, 0, tuple(findings))

    try:
        parse_policy(source, name=name, path=path)
    except PolicyError as exc:
        message = str(exc).removeprefix(f"{where}: ")
        add(
            "error",
            _front_matter_line(text, message),
            "front-matter",
            f"{message}; fix the "
            "front matter (---, id, action: block|redact|annotate|log, scope, detectors, ---)",
        )
    try:
        _, body = split_front_matter(text)
    except Exception:
        return LintReport(where, estimate_tokens(text), tuple(findings))
    if not text.startswith("---"):
        add(
            "warning",
            1,
            "front-matter",
            "no front matter: the id falls back to the file "
            f"name and the action to block; start the file with ---, id: {name}, action: ..., ---",
        )
    offset = text[: len(text) - len(body)].count("\n")  # body is a suffix of the file text
    lines = body.splitlines()
    tokens = estimate_tokens(body)
    if not body.strip():
        return LintReport(where, tokens, tuple(findings))

    headings = _headings(lines)
    first: dict[str, _Heading] = {}
    for h in headings:
        if h.section and h.section not in first:
            first[h.section] = h
    file_line = lambda i: offset + i + 1  # noqa: E731

    _check_sections(first, headings, lines, file_line, add)
    examples = first.get("examples")
    examples_span = (
        range(examples.index, _section_end(headings, examples, len(lines)))
        if examples
        else range(0)
    )
    _check_output_format(first, lines, examples_span, file_line, add)
    if examples:
        _check_examples(lines, examples_span, file_line, add)
    _check_length(tokens, file_line(0), add)
    for i, line in _prose_lines(lines, examples_span):
        seen: set[str] = set()
        for match in _VAGUE.finditer(line):
            word = re.sub(r"\s+", " ", match.group(1)).lower()
            if word in seen:
                continue
            seen.add(word)
            add(
                "warning",
                file_line(i),
                "vague-word",
                f"vague word {word!r}: the model applies "
                "rules literally and hedges blur the boundary; state the exact condition, or "
                "move the borderline case into EXAMPLES with its label",
            )
    findings.sort(key=lambda f: (f.line, f.level != "error"))
    return LintReport(where, tokens, tuple(findings))


def lint_file(path: str | Path) -> LintReport:
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return lint_source(source, name=path.stem, path=str(path))


def _front_matter_line(text: str, message: str) -> int:
    for key in ("reasoning_effort", "detectors", "action", "scope", "id", "category"):
        if message.startswith(key):
            match = re.search(rf"^{key}\s*:", text, re.M)
            if match:
                return text.count("\n", 0, match.start()) + 1
    if "empty" in message:
        return text.count("\n") + 1
    return 1


def _check_sections(first, headings, lines, file_line, add) -> None:
    for pos, section in enumerate(SECTIONS):
        if section in first:
            continue
        following = [s for s in SECTIONS[pos + 1 :] if s in first]
        if following:
            at, where = file_line(first[following[0]].index), f"before {TITLES[following[0]]}"
        else:
            at, where = file_line(len(lines) - 1), "at the end"
        add(
            "error",
            at,
            "missing-section",
            f"missing the {TITLES[section]} section: add a "
            f"`{TITLES[section]}` heading {where} with {PURPOSE[section]}",
        )
    present = sorted(first.values(), key=lambda h: h.index)
    for pos, heading in enumerate(present):
        rank = SECTIONS.index(heading.section)
        behind = [h for h in present[pos + 1 :] if SECTIONS.index(h.section) < rank]
        if behind:
            add(
                "warning",
                file_line(heading.index),
                "section-order",
                f"{TITLES[heading.section]}"
                f" comes before {TITLES[behind[0].section]}; the guide's order is INSTRUCTIONS, "
                "DEFINITIONS, VIOLATES (1), SAFE (0), EXAMPLES: move this section down",
            )
    for heading in present:
        end = _section_end(headings, heading, len(lines))
        if not any(line.strip() for line in lines[heading.index + 1 : end]):
            add(
                "warning",
                file_line(heading.index),
                "empty-section",
                f"the "
                f"{TITLES[heading.section]} section is empty: fill in {PURPOSE[heading.section]}",
            )


def _check_output_format(first, lines, examples_span, file_line, add) -> None:
    body_sections = [
        first[s].index for s in ("definitions", "violates", "safe", "examples") if s in first
    ]
    top_end = min(body_sections) if body_sections else max(1, math.ceil(len(lines) * 0.3))
    mentions = [
        i for i, line in enumerate(lines) if i not in examples_span and _FORMAT_MENTION.search(line)
    ]
    top_line = file_line(first["instructions"].index if "instructions" in first else 0)
    if not mentions:
        add(
            "error",
            top_line,
            "output-format",
            "no output format stated: tell the model "
            f"exactly what to answer near the top, e.g. `{FORMAT_HINT}` (or a bare 0/1), and "
            "restate it just before EXAMPLES",
        )
        return
    if not any(i < top_end for i in mentions):
        add(
            "warning",
            top_line,
            "output-format-top",
            "the output format is not stated near "
            f"the top: say it in INSTRUCTIONS, e.g. `{FORMAT_HINT}`",
        )
    examples = first.get("examples")
    if examples and not any(top_end <= i < examples.index for i in mentions):
        add(
            "warning",
            file_line(examples.index),
            "output-format-restated",
            "the output format "
            "is not restated before EXAMPLES: add a line such as `Output format (restated): "
            'JSON only, {"violation": 0|1, ...}` just above this heading',
        )


def _check_examples(lines, span, file_line, add) -> None:
    labels: list[int] = []
    for i in span:
        for pattern in _EXAMPLE_LABEL:
            match = pattern.search(lines[i])
            if match:
                labels.append(int(match.group(1)))
                break
    at = file_line(span.start)
    how = 'write each as `Content: ...` then `Answer: {"violation": 1, ...}` (or `Answer: 0`)'
    if not labels:
        add("error", at, "examples-labels", f"no labeled examples found in EXAMPLES: {how}")
        return
    for label, name in ((1, "VIOLATES (1)"), (0, "SAFE (0)")):
        if label not in labels:
            add(
                "error",
                at,
                "examples-labels",
                f"no {name} example: add at least one label-{label} boundary case ({how})",
            )
    low, high = EXAMPLES_RECOMMENDED
    if not low <= len(labels) <= high:
        advice = (
            "add short boundary cases for both labels"
            if len(labels) < low
            else "keep the sharpest boundary cases and move the rest into a golden set"
        )
        add(
            "warning",
            at,
            "examples-count",
            f"{len(labels)} labeled examples; the guide recommends {low}-{high}: {advice}",
        )


def _check_length(tokens: int, line: int, add) -> None:
    low, high = SWEET_SPOT
    if tokens > MAX_TOKENS:
        add(
            "error",
            line,
            "length",
            f"about {tokens} tokens, past the ~{MAX_TOKENS} the model "
            "handles well: split it into several policies or cut repetition",
        )
    elif tokens > high:
        add(
            "warning",
            line,
            "length",
            f"about {tokens} tokens; the sweet spot is {low}-{high}: "
            "tighten wording, drop repeated rules and keep 4-6 examples",
        )
    elif tokens < low:
        add(
            "warning",
            line,
            "length",
            f"about {tokens} tokens; the sweet spot is {low}-{high}: "
            "add definitions, near-miss SAFE cases and boundary examples",
        )
