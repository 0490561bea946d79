"""Pure scoring: confusion matrix, rates, per-category results, percentiles, flips."""

from __future__ import annotations

import pytest

from proxy.workbench.metrics import Observation, compute, flipped, percentile

# expected, predicted, expected category, predicted category, latency
HAND_CHECKED = [
    Observation(1, 1, "CH1", "CH1", 10.0),  # TP, category agrees
    Observation(1, 1, "CH2", "CH1", 20.0),  # TP, category disagrees
    Observation(1, 0, "CH3", None, 30.0),  # FN
    Observation(1, 0, "CH3", None, 40.0),  # FN
    Observation(0, 1, None, "CH1", 50.0),  # FP
    Observation(0, 0, None, None, 60.0),  # TN
    Observation(0, 0, None, None, 70.0),  # TN
    Observation(0, 0, None, None, 80.0),  # TN
]


def test_confusion_matrix_and_rates_are_exact() -> None:
    m = compute(HAND_CHECKED)
    assert (m.tp, m.fp, m.fn, m.tn, m.errors) == (2, 1, 2, 3, 0)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert m.accuracy == pytest.approx(5 / 8)


def test_per_category_recall_and_agreement() -> None:
    by_name = {c.category: c for c in compute(HAND_CHECKED).categories}
    assert sorted(by_name) == ["CH1", "CH2", "CH3"]
    assert (by_name["CH1"].recall, by_name["CH1"].agreement) == (1.0, 1.0)
    assert (by_name["CH2"].recall, by_name["CH2"].agreement) == (1.0, 0.0)
    assert by_name["CH3"].positives == 2
    assert by_name["CH3"].recall == 0.0
    assert by_name["CH3"].agreement is None  # nothing detected: agreement is undefined
    assert compute(HAND_CHECKED).category_agreement == pytest.approx(1 / 2)


def test_category_codes_match_case_insensitively_and_by_parent() -> None:
    m = compute([Observation(1, 1, "H2", "h2.f"), Observation(1, 1, "H2", "H20")])
    assert (m.categories[0].detected, m.categories[0].matched) == (2, 1)


def test_errors_are_neither_misses_nor_safe_answers() -> None:
    m = compute([*HAND_CHECKED, Observation(1, None, "CH1"), Observation(0, None)])
    assert (m.tp, m.fp, m.fn, m.tn, m.errors) == (2, 1, 2, 3, 2)
    assert m.cases == 10 and m.scored == 8
    assert m.accuracy == pytest.approx(5 / 8)
    ch1 = next(c for c in m.categories if c.category == "CH1")
    assert (ch1.positives, ch1.scored, ch1.errors, ch1.recall) == (2, 1, 1, 1.0)


def test_undefined_rates_are_none_not_zero() -> None:
    all_safe = compute([Observation(0, 0), Observation(0, 0)])
    assert all_safe.precision is None and all_safe.recall is None and all_safe.f1 is None
    assert all_safe.accuracy == 1.0
    missed = compute([Observation(1, 0)])
    assert missed.precision is None and missed.recall == 0.0 and missed.f1 == 0.0
    nothing = compute([Observation(1, None)])
    assert nothing.accuracy is None and nothing.latency(50) is None


def test_latency_percentiles_interpolate_and_skip_errors() -> None:
    assert percentile([10, 20, 30, 40], 50) == pytest.approx(25)
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)
    assert percentile([7], 95) == 7
    assert percentile([], 50) is None
    m = compute([*HAND_CHECKED, Observation(0, None, latency_ms=9999.0)])
    assert m.latency(50) == pytest.approx(45.0)
    assert m.latency(95) == pytest.approx(76.5)
    assert m.as_dict()["latency_ms"] == {"p50": 45.0, "p95": 76.5, "max": 80.0}


def test_flipped_ignores_errors_on_either_side() -> None:
    assert flipped([1, 0, 1, None, 0], [1, 1, 0, 0, None]) == [1, 2]
    with pytest.raises(ValueError):
        flipped([1], [1, 0])


def test_as_dict_is_json_ready() -> None:
    doc = compute(HAND_CHECKED).as_dict()
    assert doc["tp"] == 2 and doc["precision"] == 0.6667 and doc["f1"] == 0.5714
    assert doc["categories"][1] == {
        "category": "CH2",
        "positives": 1,
        "scored": 1,
        "detected": 1,
        "recall": 1.0,
        "category_matches": 0,
        "category_agreement": 0.0,
        "errors": 0,
    }
