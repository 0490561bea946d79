"""`policy test --compare`: both policies on the same cases, and exactly the flipped ones."""

from __future__ import annotations

import re
import time

import pytest

# A flags aimbot and wallhack; B flags aimbot and boosting.
CASES = [
    ("Where can I buy an aimbot?", 1, "CH1"),  # 1: A 1, B 1
    ("Free wallhack download", 1, "CH1"),  # 2: A 1 -> B 0 (now wrong)
    ("Boosting service, cheap", 1, "CH3"),  # 3: A 0 -> B 1 (now correct)
    ("Is boosting allowed in ranked?", 0),  # 4: A 0 -> B 1 (now wrong)
    ("Pancake recipe please", 0),  # 5: A 0, B 0
    ("Report a wallhack user to support", 0),  # 6: A 1 -> B 0 (now correct)
]


@pytest.fixture
def pair(safeguard, write_policy, write_cases):
    a = write_policy("cheating", "aimbot, wallhack", "CH1")
    b = write_policy("cheating-v2", "aimbot, boosting", "CH1")
    return safeguard, a, b, write_cases(CASES)


def compare(cli, pair, other=None, *extra: str):
    """`policy test A --cases ... --classifier ... --compare B [extra]`."""
    safeguard, a, b, cases = pair
    return cli(
        "policy",
        "test",
        a,
        "--cases",
        cases,
        "--classifier",
        safeguard.url,
        "--compare",
        other or b,
        *extra,
    )


def test_compare_lists_exactly_the_flipped_cases(cli, pair) -> None:
    safeguard = pair[0]
    result = compare(cli, pair, None, "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["policy"]["id"] == "cheating" and doc["compare"]["policy"]["id"] == "cheating-v2"
    flips = doc["compare"]["flipped"]
    assert [(f["index"], f["expected"], f["before"], f["after"]) for f in flips] == [
        (2, 1, 1, 0),
        (3, 1, 0, 1),
        (4, 0, 0, 1),
        (6, 0, 1, 0),
    ]
    assert flips[1]["content"] == "Boosting service, cheap"
    assert flips[1]["rationale"] == "Matches a trigger."
    assert flips[0]["rationale"] == "No trigger found."
    a_m, b_m = doc["metrics"], doc["compare"]["metrics"]
    assert (a_m["tp"], a_m["fp"], a_m["fn"], a_m["tn"]) == (2, 1, 1, 2)
    assert (b_m["tp"], b_m["fp"], b_m["fn"], b_m["tn"]) == (2, 1, 1, 2)
    assert len(safeguard.fake.calls) == 12  # every case, once per policy


def test_compare_text_is_side_by_side_with_flips(cli, pair) -> None:
    result = compare(cli, pair)
    assert result.code == 0
    out = result.out
    assert re.search(r"^A  cheating \(v [0-9a-f]{12}\)", out, re.M)
    assert re.search(r"^B  cheating-v2 \(v [0-9a-f]{12}\)", out, re.M)
    assert re.search(r"^F1\s+0\.667\s+0\.667\s+\+0\.000$", out, re.M)
    assert re.search(r"^TP\s+2\s+2\s+\+0$", out, re.M)
    assert re.search(r"^  CH3\s+0\.000\s+1\.000$", out, re.M)
    assert "flipped verdicts, A -> B (4)" in out
    flipped = re.findall(
        r"^  #(\d+) \(line \d+\)  expected (\S+)(?: \[\w+\])?: (\d) -> (\d)", out, re.M
    )
    assert flipped == [
        ("2", "1", "1", "0"),
        ("3", "1", "0", "1"),
        ("4", "0", "0", "1"),
        ("6", "0", "1", "0"),
    ]
    assert "#3 (line 3)  expected 1 [CH3]: 0 -> 1  (now correct)" in out
    assert "#4 (line 4)  expected 0: 0 -> 1  (now wrong)" in out


def test_compare_with_no_flips_says_so(cli, pair, write_policy) -> None:
    same = write_policy("cheating-copy", "wallhack, aimbot", "CH1")
    assert "flipped verdicts: none" in compare(cli, pair, same).out
    doc = compare(cli, pair, same, "--json").json()
    assert doc["compare"]["flipped"] == []


def test_min_f1_with_compare_gates_both_policies(cli, pair, write_policy) -> None:
    safeguard, a, _, cases = pair
    worse = write_policy("cheating-narrow", "aimbot", "CH1")  # F1 on CASES: 2/3 vs 0.5
    base = ("policy", "test", a, "--cases", cases, "--classifier", safeguard.url)
    assert cli(*base, "--compare", worse, "--min-f1", "0.5").code == 0
    result = cli(*base, "--compare", worse, "--min-f1", "0.6")
    assert result.code == 1
    assert "for cheating-narrow" in result.err and "for cheating (" not in result.err


def test_both_policies_run_concurrently(cli, pair) -> None:
    safeguard = pair[0]
    safeguard.fake.delay_s = 0.2
    started = time.monotonic()
    result = compare(cli, pair, None, "--concurrency", "12")
    elapsed = time.monotonic() - started
    assert result.code == 0
    assert elapsed < 1.2  # 12 classifications of 0.2 s each, one after another, take 2.4 s
    assert {c.policy.count("triggers") for c in safeguard.fake.calls} == {1}
    first_wave = sorted(c.at for c in safeguard.fake.calls)
    assert first_wave[-1] - first_wave[0] < 0.15
