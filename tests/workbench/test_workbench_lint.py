# ruff: noqa: E501  (GOOD is a policy file verbatim: its lines are as long as a policy's)
"""`policy lint`: each check catches its problem, and a well-formed policy passes clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.workbench.lint import estimate_tokens, lint_source

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
---
id: gambling-ads
action: block
reasoning_effort: low
scope: last_user
category: GA
---
## INSTRUCTIONS
Decide whether the content promotes real-money gambling to the reader. Reporting on, studying or warning about gambling is safe. Return only JSON: {"violation": 0|1, "policy_category": "<code>", "rationale": "<one sentence>"}.

## DEFINITIONS
- Real-money gambling: staking money or items with cash value on an uncertain outcome: casino games, sports betting, lotteries, cash-out loot boxes.
- Promotion: an invitation, referral link, bonus code, odds tip with a call to bet, or instructions to sign up or deposit.

## VIOLATES (1)
- GA1 Direct promotion: urging the reader to bet, deposit or sign up with an operator.
- GA2 Bonus and referral codes: sharing sign-up bonuses, free-bet offers, promo codes or affiliate links.
- GA3 Evasion help: explaining how to bet where it is banned, bypass age checks or self-exclusion, or hide gambling from a bank.
- GA4 Guaranteed-win claims: selling tips, systems or bots that claim sure profits from betting.

## SAFE (0)
- News, statistics and research about gambling, gambling companies or regulation.
- Personal stories about losses, recovery and support groups.
- Game rules and probability explained without a call to bet, for example the odds of a royal flush.
- Free-to-play games with no cash value and board games.

Output format (restated): JSON only, {"violation": 0|1, "policy_category": "<code>", "rationale": "<one sentence>"}; policy_category is null when violation is 0.

## EXAMPLES
Content: Use code SPIN50 at LuckyStar for 50 free spins, deposit today!
Answer: {"violation": 1, "policy_category": "GA2", "rationale": "Shares a casino bonus code."}

Content: How do I use a VPN to bet on football from a state where it is banned?
Answer: {"violation": 1, "policy_category": "GA3", "rationale": "Asks how to evade a betting ban."}

Content: What are the odds of hitting a royal flush in five-card poker?
Answer: {"violation": 0, "policy_category": null, "rationale": "Probability question without a call to bet."}

Content: I lost my savings on sports betting and want to find a support group.
Answer: {"violation": 0, "policy_category": null, "rationale": "Seeks recovery help."}

Content: My system beats roulette every time, buy it for $99 and never lose again.
Answer: {"violation": 1, "policy_category": "GA4", "rationale": "Sells a guaranteed-win system."}
"""


def lint(text: str, name: str = "gambling-ads"):
    return lint_source(text.encode(), name=name, path=f"{name}.md")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def found(report, code: str) -> list:
    return [f for f in report.findings if f.code == code]


RETURN_SENTENCE = (
    ' Return only JSON: {"violation": 0|1, "policy_category": "<code>", '
    '"rationale": "<one sentence>"}.'
)
RESTATED = next(line for line in GOOD.splitlines() if line.startswith("Output format (restated)"))
SAFE_EXAMPLES = (
    "Content: What are the odds of hitting a royal flush in five-card poker?\n"
    'Answer: {"violation": 0, "policy_category": null, "rationale": '
    '"Probability question without a call to bet."}\n\n'
    "Content: I lost my savings on sports betting and want to find a support group.\n"
    'Answer: {"violation": 0, "policy_category": null, "rationale": "Seeks recovery help."}\n\n'
)


def test_a_well_formed_policy_passes_clean() -> None:
    report = lint(GOOD)
    assert report.findings == ()
    assert 400 <= report.tokens <= 600


def test_token_estimate_is_close_to_a_real_tokenizer() -> None:
    assert estimate_tokens("The quick brown fox jumps over the lazy dog.") == 10
    assert estimate_tokens("1234567") == 3
    assert 0.8 < estimate_tokens(GOOD) / (len(GOOD) / 4) < 1.2


def test_invalid_front_matter_is_an_error_on_its_line() -> None:
    text = GOOD.replace("action: block", "action: explode")
    [finding] = found(lint(text), "front-matter")
    assert finding.level == "error" and finding.line == line_of(text, "action:")
    assert "action must be one of block, redact, annotate, log" in finding.message


def test_unknown_detector_and_unclosed_front_matter_are_errors() -> None:
    [bad] = found(lint(GOOD.replace("scope: last_user", "detectors: [telepathy]")), "front-matter")
    assert bad.level == "error" and "detectors must be a list" in bad.message
    [unclosed] = found(lint(GOOD.replace("category: GA\n---\n", "category: GA\n")), "front-matter")
    assert unclosed.level == "error" and "never closed" in unclosed.message


def test_missing_front_matter_is_a_warning() -> None:
    text = GOOD.split("---\n", 2)[2]
    report = lint(text)
    [finding] = found(report, "front-matter")
    assert (finding.level, finding.line) == ("warning", 1)
    assert report.errors == 0


@pytest.mark.parametrize(
    "heading",
    ["## INSTRUCTIONS", "## DEFINITIONS", "## VIOLATES (1)", "## SAFE (0)", "## EXAMPLES"],
)
def test_each_missing_section_is_an_error(heading: str) -> None:
    report = lint(GOOD.replace(heading + "\n", ""))
    missing = found(report, "missing-section")
    assert [f.level for f in missing] == ["error"]
    assert f"missing the {heading} section" in missing[0].message


def test_reasonable_heading_variants_are_accepted() -> None:
    text = (
        GOOD.replace("## INSTRUCTIONS", "# Instructions")
        .replace("## DEFINITIONS", "## Key terms")
        .replace("## VIOLATES (1)", "**Violating content (1)**")
        .replace("## SAFE (0)", "## Safe content (0):")
        .replace("## EXAMPLES", "### Examples")
    )
    report = lint(text)
    assert found(report, "missing-section") == [] and found(report, "section-order") == []
    assert report.errors == 0


def test_sections_out_of_order_are_flagged() -> None:
    head, rest = GOOD.split("## VIOLATES (1)\n")
    violates, rest = rest.split("## SAFE (0)\n")
    safe, rest = rest.split("Output format (restated)")
    text = f"{head}## SAFE (0)\n{safe}## VIOLATES (1)\n{violates}Output format (restated){rest}"
    [finding] = found(lint(text), "section-order")
    assert finding.level == "warning" and finding.line == line_of(text, "## SAFE (0)")
    assert "comes before ## VIOLATES (1)" in finding.message


def test_empty_section_is_flagged() -> None:
    start = GOOD.index("## DEFINITIONS\n") + len("## DEFINITIONS\n")
    text = GOOD[:start] + "\n" + GOOD[GOOD.index("## VIOLATES (1)") :]
    [finding] = found(lint(text), "empty-section")
    assert finding.line == line_of(text, "## DEFINITIONS") and "is empty" in finding.message


def test_no_output_format_at_all_is_an_error() -> None:
    text = GOOD.replace(RETURN_SENTENCE, "").replace(RESTATED + "\n", "")
    [finding] = found(lint(text), "output-format")
    assert finding.level == "error" and finding.line == line_of(text, "## INSTRUCTIONS")
    assert '{"violation": 0|1' in finding.message


def test_output_format_not_restated_before_examples() -> None:
    text = GOOD.replace(RESTATED + "\n", "")
    report = lint(text)
    [finding] = found(report, "output-format-restated")
    assert finding.level == "warning" and finding.line == line_of(text, "## EXAMPLES")
    assert found(report, "output-format") == [] and found(report, "output-format-top") == []


def test_output_format_not_stated_near_the_top() -> None:
    text = GOOD.replace(RETURN_SENTENCE, "")
    [finding] = found(lint(text), "output-format-top")
    assert finding.level == "warning" and finding.line == line_of(text, "## INSTRUCTIONS")


def test_a_bare_0_or_1_instruction_counts_as_the_output_format() -> None:
    bare = "Answer 1 if the content violates this policy, otherwise answer 0."
    text = GOOD.replace(RETURN_SENTENCE, " " + bare).replace(RESTATED, "Reminder: " + bare)
    report = lint(text)
    assert [f.code for f in report.findings if f.code.startswith("output-format")] == []


def test_examples_without_a_safe_label_are_an_error() -> None:
    report = lint(GOOD.replace(SAFE_EXAMPLES, ""))
    labels = found(report, "examples-labels")
    assert [f.level for f in labels] == ["error"] and "no SAFE (0) example" in labels[0].message
    [count] = found(report, "examples-count")
    assert count.level == "warning" and count.message.startswith("3 labeled examples")


def test_examples_without_a_violating_label_are_an_error() -> None:
    text = GOOD.split("## EXAMPLES\n")[0] + "## EXAMPLES\n" + SAFE_EXAMPLES * 2
    labels = found(lint(text), "examples-labels")
    assert [f.level for f in labels] == ["error"] and "no VIOLATES (1) example" in labels[0].message


def test_examples_without_readable_labels_are_an_error() -> None:
    head = GOOD.split("## EXAMPLES\n")[0]
    text = head + "## EXAMPLES\nContent: bet now!\nThis one is bad.\n\nContent: odds?\nFine.\n"
    [finding] = found(lint(text), "examples-labels")
    assert finding.level == "error" and "no labeled examples found" in finding.message
    assert finding.line == line_of(text, "## EXAMPLES")


def test_arrow_labels_and_example_count() -> None:
    head = GOOD.split("## EXAMPLES\n")[0]
    rows = [f'- "bet case {i}" -> {i % 2}' for i in range(8)]
    report = lint(head + "## EXAMPLES\n" + "\n".join(rows) + "\n")
    assert found(report, "examples-labels") == []
    [count] = found(report, "examples-count")
    assert count.message.startswith("8 labeled examples; the guide recommends 4-6")


def test_length_outside_the_sweet_spot() -> None:
    short = lint(GOOD.split("## DEFINITIONS")[0] + "## EXAMPLES\nx -> 1\ny -> 0\n")
    [finding] = found(short, "length")
    assert finding.level == "warning" and "the sweet spot is 400-600" in finding.message
    extra = "- Extra rule about sponsored streams that show deposits to viewers.\n" * 8
    long = lint(GOOD.replace("## SAFE (0)\n", extra + "\n## SAFE (0)\n"))
    [finding] = found(long, "length")
    assert finding.level == "warning" and long.tokens > 600
    huge = lint(GOOD.replace("## SAFE (0)\n", extra * 120 + "\n## SAFE (0)\n"))
    [finding] = found(huge, "length")
    assert finding.level == "error" and huge.tokens > 10_000 and huge.errors == 1


def test_vague_words_are_warnings_with_line_numbers() -> None:
    rule = "- GA5 Tipsters: accounts that usually post odds and may link to bookmakers."
    text = GOOD.replace("## SAFE (0)\n", rule + "\n\n## SAFE (0)\n")
    warnings = found(lint(text), "vague-word")
    assert [(f.level, f.line) for f in warnings] == [("warning", line_of(text, "GA5"))] * 2
    assert ["'usually'" in warnings[0].message, "'may'" in warnings[1].message] == [True, True]


def test_vague_words_in_examples_quotes_comments_and_dates_are_not_flagged() -> None:
    text = (
        GOOD.replace("## DEFINITIONS\n", '## DEFINITIONS\n- Slogans like "you might win" count.\n')
        .replace("## VIOLATES (1)\n", "## VIOLATES (1)\n<!-- often revised -->\n")
        .replace("## SAFE (0)\n", "## SAFE (0)\n- Reports on the May 2024 lottery draw.\n")
        .replace("Content: Use code SPIN50", "Content: You might usually win! Use code SPIN50")
    )
    assert found(lint(text), "vague-word") == []


def test_lint_cli_exit_codes_and_json(cli, tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    good = tmp_path / "good" / "gambling-ads.md"  # the file name is the policy's id
    good.write_text(GOOD)
    bad = tmp_path / "gambling-ads.md"
    bad.write_text(GOOD.replace("## VIOLATES (1)\n", ""))
    ok = cli("policy", "lint", good)
    assert ok.code == 0 and f"{good}: ok, ~" in ok.out
    failed = cli("policy", "lint", good, bad)
    assert failed.code == 1
    line = line_of(GOOD.replace("## VIOLATES (1)\n", ""), "## SAFE (0)")
    assert f"{bad}:{line}: error: missing the ## VIOLATES (1) section" in failed.out
    doc = cli("policy", "lint", bad, "--json")
    assert doc.code == 1
    [report] = doc.json()["files"]
    assert report["path"] == str(bad) and report["errors"] == 1
    assert report["findings"][0] == {
        "level": "error",
        "line": line,
        "code": "missing-section",
        "message": report["findings"][0]["message"],
    }
    assert cli("policy", "lint", tmp_path).code == 1  # a folder lints every *.md in it
    missing = cli("policy", "lint", tmp_path / "nope.md")
    assert missing.code == 2 and "no such file" in missing.err


def test_every_shipped_policy_lints_without_errors() -> None:
    paths = sorted((REPO / "policies").glob("*.md"))
    if not paths:
        pytest.skip("no shipped policies yet")
    failures = {
        path.name: [f"{f.line}: {f.message}" for f in report.findings if f.level == "error"]
        for path in paths
        if (report := lint_source(path.read_bytes(), name=path.stem, path=str(path))).errors
    }
    assert failures == {}


def test_an_id_that_differs_from_the_file_name_is_flagged_naming_both(cli, tmp_path) -> None:
    copy = tmp_path / "gambling-ads-v2.md"
    copy.write_text(GOOD)  # a copy that keeps `id: gambling-ads`
    result = cli("policy", "lint", copy)
    assert result.code == 1
    assert (
        f"{copy}:2: error: id 'gambling-ads' differs from the file name gambling-ads-v2.md"
        in result.out
    )
    assert "set `id: gambling-ads-v2` or rename the file to gambling-ads.md" in result.out
    copy.write_text(GOOD.replace("id: gambling-ads", "id: gambling-ads-v2"))
    assert cli("policy", "lint", copy).code == 0
