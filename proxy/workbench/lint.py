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
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

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
    ("definitions", re.compile(r"^(definitions?|key terms|terms|terminology|glossary)\b")),
    ("instructions", re.compile(r"^(instructions?|task|goal|objective|purpose)\b")),
    (
        "safe",
        re.compile(
            r"^(safe|allowed|acceptable|permitted|out of scope)\b|\(\s*0\s*\)|\blabel\s*0\b"
            r"|\b(non-?violating|not (a )?violat\w*|doesn'?t violate|does not violate)\b"
        ),
    ),
    (
        "violates",
        re.compile(
            r"^(prohibited|disallowed|not allowed|unsafe)\b|\bviolat|\(\s*1\s*\)|\blabel\s*1\b"
        ),
    ),
)
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
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
# fmt: off
VAGUE_WORDS: tuple[str, ...] = (
    "generally", "usually", "typically", "often", "sometimes", "may", "might", "could",
    "possibly", "probably", "likely", "perhaps", "maybe", "mostly", "frequently",
    "occasionally", "somewhat", "arguably", "normally", "etc", "in most cases", "tends to",
    "tend to", "kind of", "sort of", "more or less",
)
# fmt: on
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


@dataclass(frozen=True, slots=True)
class _Body:
    """The policy text after the front matter, with its structure found."""

    lines: list[str]
    offset: int  # file lines before the body
    headings: list[_Heading]
    first: dict[str, _Heading]  # each section's first heading
    examples: range  # body line indexes of the EXAMPLES section

    def line(self, index: int) -> int:
        return self.offset + index + 1

    def end_of(self, start: _Heading) -> int:
        later = (h.index for h in self.headings if h.index > start.index and h.level <= start.level)
        return next(later, len(self.lines))


def estimate_tokens(text: str) -> int:
    """Rough o200k-style count: common words are one token, long words, digit runs (split
    in threes), punctuation runs and non-Latin script cost more. Near a real tokenizer on
    English policy prose, which is all a length check needs."""
    count = 0
    for piece in _TOKEN_PIECE.findall(text):
        head = piece[0]
        if head in " \t":
            count += len(piece) > 1  # one space merges into the next word
        elif head == "\n":
            count += 1
        elif head.isascii() and head.isalpha():
            count += 1 if len(piece) <= 10 else math.ceil(len(piece) / 6)
        elif head.isdigit():
            count += math.ceil(len(piece) / 3)
        else:
            count += math.ceil(len(piece) / 2)
    return count


def classify_heading(title: str) -> str | None:
    text = re.sub(r"[*_`]", "", title).strip().lower()
    return next((s for s, pattern in _SECTION_PATTERNS if pattern.search(text)), None)


def _headings(lines: list[str]) -> list[_Heading]:
    found: list[_Heading] = []
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif in_fence:
            continue
        elif atx := _ATX.match(line):
            found.append(_Heading(i, len(atx.group(1)), classify_heading(atx.group(2))))
        elif section := _bare_title(line):
            found.append(_Heading(i, 2, section))
    return found


def _bare_title(line: str) -> str | None:
    """A section named by a whole line in bold or capitals ("**VIOLATES (1)**", "EXAMPLES:");
    plain prose like "Safe:" stays prose."""
    bare = _BARE_TITLE.match(line)
    if bare and (bare.group(1) or bare.group(2).upper() == bare.group(2)):
        return classify_heading(bare.group(2))
    return None


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


_CONTENT = re.compile(
    r"^\s*[-*]?\s*\**(?:content|input|text|example|user|prompt)\**\s*:\s*(.*)$", re.I
)


def labeled_examples(policy_text: str) -> list[tuple[str, int]]:
    """(content, label) pairs of the EXAMPLES section: `Content: ...` lines (or `Input:`,
    `Text:`...) each closed by the next labeled line (`Answer: {"violation": 1}`, `-> 0`)."""
    body = _structure(policy_text, offset=0)
    found: list[tuple[str, int]] = []
    pending: list[str] = []
    for i in body.examples:
        line = body.lines[i]
        label = next((m for p in _EXAMPLE_LABEL if (m := p.search(line))), None)
        content = _CONTENT.match(line)
        if content:
            pending = [content.group(1)]
        elif pending and not label and line.strip():
            pending.append(line.strip())
        if label:
            text = " ".join(pending).strip()
            if content:  # `Content: ... -> 1` on one line
                text = line[content.start(1) : label.start()].strip().rstrip("-=→>").strip()
            if text:
                found.append((text.strip('"'), int(label.group(1))))
            pending = []
    return found


def lint_source(source: bytes, *, name: str, path: str | None = None) -> LintReport:
    """Lint a policy file's bytes; `name` is its stem (the default policy id)."""
    where = path or name
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        return LintReport(where, 0, (_error(line, "encoding", "not UTF-8: save it as UTF-8"),))
    findings: list[Finding] = []
    policy = None
    try:
        policy = parse_policy(source, name=name, path=path)
        if policy.id != name:
            findings.append(
                _error(
                    _front_matter_line(text, "id"),
                    "id-file-name",
                    f"id {policy.id!r} differs from the file name {name}.md: the gateway "
                    f"loads it as {policy.id!r} (a copy of {policy.id}.md collides with it as "
                    f"a duplicate id); set `id: {name}` or rename the file to {policy.id}.md",
                )
            )
    except PolicyError as exc:
        problem = str(exc).removeprefix(f"{where}: ")
        fix = "fix the front matter (---, id, action, scope, reasoning_effort, detectors, ---)"
        findings.append(
            _error(_front_matter_line(text, problem), "front-matter", f"{problem}; {fix}")
        )
    try:
        _, body_text = split_front_matter(text)
    except (PolicyError, yaml.YAMLError):
        return LintReport(where, estimate_tokens(text), tuple(findings))
    if not text.startswith("---"):
        problem = "no front matter: the id falls back to the file name and the action to block"
        fix = f"start the file with ---, id: {name}, action: ..., ---"
        findings.append(_warning(1, "front-matter", f"{problem}; {fix}"))
    tokens = estimate_tokens(body_text)
    if body_text.strip() and not (policy and policy.detectors_only):  # else no model reads it
        body = _structure(body_text, offset=text[: len(text) - len(body_text)].count("\n"))
        for check in (_sections, _output_format, _examples, _vague_words):
            findings += check(body)
        findings += _length(tokens, body.line(0))
    findings.sort(key=lambda f: (f.line, f.level != "error"))
    return LintReport(where, tokens, tuple(findings))


def lint_file(path: str | Path) -> LintReport:
    path = Path(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return lint_source(source, name=path.stem, path=str(path))


def _error(line: int, code: str, message: str) -> Finding:
    return Finding("error", line, code, message)


def _warning(line: int, code: str, message: str) -> Finding:
    return Finding("warning", line, code, message)


def _structure(text: str, *, offset: int) -> _Body:
    lines = text.splitlines()
    headings = _headings(lines)
    first: dict[str, _Heading] = {}
    for h in headings:
        if h.section:
            first.setdefault(h.section, h)
    body = _Body(lines, offset, headings, first, range(0))
    if "examples" in first:
        start = first["examples"]
        body = replace(body, examples=range(start.index, body.end_of(start)))
    return body


def _front_matter_line(text: str, problem: str) -> int:
    for key in ("reasoning_effort", "detectors", "action", "scope", "id"):
        if problem.startswith(key) and (match := re.search(rf"^{key}\s*:", text, re.M)):
            return text.count("\n", 0, match.start()) + 1
    return text.count("\n") + 1 if "empty" in problem else 1


def _sections(body: _Body) -> list[Finding]:
    out: list[Finding] = []
    for pos, section in enumerate(SECTIONS):
        if section in body.first:
            continue
        title = TITLES[section]
        following = [s for s in SECTIONS[pos + 1 :] if s in body.first]
        if following:
            at, where = body.line(body.first[following[0]].index), f"before {TITLES[following[0]]}"
        else:
            at, where = body.line(len(body.lines) - 1), "at the end"
        fix = f"add a `{title}` heading {where} with {PURPOSE[section]}"
        out.append(_error(at, "missing-section", f"missing the {title} section: {fix}"))
    present = sorted(body.first.values(), key=lambda h: h.index)
    for pos, heading in enumerate(present):
        at, title, rank = (
            body.line(heading.index),
            TITLES[heading.section],
            SECTIONS.index(heading.section),
        )
        behind = [h for h in present[pos + 1 :] if SECTIONS.index(h.section) < rank]
        if behind:
            order = "INSTRUCTIONS, DEFINITIONS, VIOLATES (1), SAFE (0), EXAMPLES"
            problem = f"{title} comes before {TITLES[behind[0].section]}"
            fix = f"the guide's order is {order}: move this section down"
            out.append(_warning(at, "section-order", f"{problem}; {fix}"))
        if not any(line.strip() for line in body.lines[heading.index + 1 : body.end_of(heading)]):
            fix = f"fill in {PURPOSE[heading.section]}"
            out.append(_warning(at, "empty-section", f"the {title} section is empty: {fix}"))
    return out


def _output_format(body: _Body) -> list[Finding]:
    starts = [body.first[s].index for s in SECTIONS[1:] if s in body.first]
    top_end = min(starts) if starts else max(1, math.ceil(len(body.lines) * 0.3))
    mentions = [
        i
        for i, line in enumerate(body.lines)
        if i not in body.examples and _FORMAT_MENTION.search(line)
    ]
    top = body.line(body.first["instructions"].index if "instructions" in body.first else 0)
    if not mentions:
        fix = f"near the top, e.g. `{FORMAT_HINT}` (or a bare 0/1), and again before EXAMPLES"
        return [_error(top, "output-format", f"no output format stated: say what to answer {fix}")]
    out: list[Finding] = []
    if not any(i < top_end for i in mentions):
        fix = f"say it in INSTRUCTIONS, e.g. `{FORMAT_HINT}`"
        out.append(_warning(top, "output-format-top", f"no output format near the top: {fix}"))
    examples = body.first.get("examples")
    if examples and not any(top_end <= i < examples.index for i in mentions):
        fix = 'add `Output format (restated): JSON only, {"violation": 0|1, ...}` above it'
        problem = "the output format is not restated before EXAMPLES"
        out.append(
            _warning(body.line(examples.index), "output-format-restated", f"{problem}: {fix}")
        )
    return out


def _examples(body: _Body) -> list[Finding]:
    if not body.examples:
        return []  # the missing section is reported on its own
    labels = []
    for i in body.examples:
        match = next((m for p in _EXAMPLE_LABEL if (m := p.search(body.lines[i]))), None)
        if match:
            labels.append(int(match.group(1)))
    at = body.line(body.examples.start)
    how = 'write each as `Content: ...` then `Answer: {"violation": 1, ...}` (or `Answer: 0`)'
    if not labels:
        return [_error(at, "examples-labels", f"no labeled examples found: {how}")]
    out = [
        _error(
            at, "examples-labels", f"no {name} example: add a label-{label} boundary case ({how})"
        )
        for label, name in ((1, "VIOLATES (1)"), (0, "SAFE (0)"))
        if label not in labels
    ]
    low, high = EXAMPLES_RECOMMENDED
    if not low <= len(labels) <= high:
        fix = "add short boundary cases for both labels"
        if len(labels) > high:
            fix = "keep the sharpest boundary cases and move the rest into a golden set"
        problem = f"{len(labels)} labeled examples; the guide recommends {low}-{high}"
        out.append(_warning(at, "examples-count", f"{problem}: {fix}"))
    return out


def _vague_words(body: _Body) -> list[Finding]:
    fix = (
        "the model applies rules literally and hedges blur the boundary; state the exact "
        "condition, or move the borderline case into EXAMPLES with its label"
    )
    out: list[Finding] = []
    for i, line in _prose_lines(body.lines, body.examples):
        words = dict.fromkeys(
            re.sub(r"\s+", " ", m.group(1)).lower() for m in _VAGUE.finditer(line)
        )
        out += [_warning(body.line(i), "vague-word", f"vague word {w!r}: {fix}") for w in words]
    return out


def _length(tokens: int, line: int) -> list[Finding]:
    low, high = SWEET_SPOT
    if tokens > MAX_TOKENS:
        fix = "split it into several policies or cut repetition"
        return [_error(line, "length", f"about {tokens} tokens, past ~{MAX_TOKENS}: {fix}")]
    if tokens > high:
        fix = "tighten wording, drop repeated rules and keep 4-6 examples"
    elif tokens < low:
        fix = "add definitions, near-miss SAFE cases and boundary examples"
    else:
        return []
    return [
        _warning(line, "length", f"about {tokens} tokens; the sweet spot is {low}-{high}: {fix}")
    ]
