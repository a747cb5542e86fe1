"""The guarded choice of k: hand-made sweeps, with the stability guard as a stand-in
function that records which ks it was asked about."""

from __future__ import annotations

import pytest

from custseg.segment import selection
from custseg.segment.evaluate import SweepPoint

RULES = selection.Rules(
    rule="guarded", tolerance=0.02, min_segment_share=0.05, business_k=(3, 6), structure_silhouette=0.7,
    stability_threshold=0.75,
)  # fmt: skip


def point(k: int, silhouette: float, smallest_share: float = 0.2) -> SweepPoint:
    return SweepPoint(k=k, wcss=100.0 / k, silhouette=silhouette, smallest_share=smallest_share)


class Jaccards:
    """A stand-in stability measure: k -> lowest bootstrap Jaccard; records the calls."""

    def __init__(self, values: dict[int, float]) -> None:
        self.values, self.asked = values, []

    def __call__(self, k: int) -> float:
        self.asked.append(k)
        return self.values[k]


# Real retail data: the silhouette falls slowly with k and none stands out (0.50 at k=2).
FLAT = [point(2, 0.50), point(3, 0.47), point(4, 0.45), point(5, 0.44), point(6, 0.42), point(7, 0.41)]


def test_guarded_without_clear_structure_takes_the_largest_stable_k_of_the_business_range():
    stability = Jaccards({6: 0.70, 5: 0.81})
    choice = selection.choose(FLAT, RULES, stability)
    assert (choice.k, choice.structure) == (5, selection.NONE)
    assert stability.asked == [6, 5]  # largest first, and no further than needed
    assert choice.stability == {6: 0.70, 5: 0.81}
    assert choice.verdicts[6] == "rejected: a segment's mean bootstrap Jaccard is 0.70, below 0.75 (unstable)"
    assert choice.verdicts[2] == "not considered: outside the business range 3-6"
    assert choice.verdicts[5] == "chosen"
    assert choice.verdicts[4] == choice.verdicts[3] == "not tested: k=5 passed first"
    assert choice.reason.startswith("no clear cluster structure: the best silhouette, 0.500 at k=2, is below 0.7")
    assert "k=5 is the largest k in the business range 3-6" in choice.reason
    assert "lowest bootstrap Jaccard 0.81" in choice.reason


def test_guarded_rejects_a_k_with_a_micro_segment_before_measuring_its_stability():
    points = [*FLAT[:4], point(6, 0.42, smallest_share=0.012), FLAT[5]]
    points[3] = point(5, 0.44, smallest_share=0.03)
    stability = Jaccards({4: 0.9})
    choice = selection.choose(points, RULES, stability)
    assert choice.k == 4 and stability.asked == [4]
    assert choice.verdicts[6] == "rejected: smallest segment 1.2% of customers, below 5.0%"
    assert choice.verdicts[5] == "rejected: smallest segment 3.0% of customers, below 5.0%"


def test_guarded_with_clear_structure_takes_the_smallest_k_near_the_best_silhouette():
    points = [point(2, 0.77), point(3, 0.86), point(4, 0.907), point(5, 0.895), point(6, 0.69)]
    stability = Jaccards({4: 1.0, 5: 1.0})
    choice = selection.choose(points, RULES, stability)
    assert (choice.k, choice.structure) == (4, selection.CLEAR) and stability.asked == [4]
    assert choice.reason.startswith("clear cluster structure: the best silhouette, 0.907 at k=4, is at least 0.7")
    assert choice.verdicts[3] == "not considered: silhouette not within tolerance of the best"
    assert choice.verdicts[5] == "not tested: k=4 passed first"  # within tolerance, but a smaller k passed


def test_guarded_with_clear_structure_falls_back_to_the_business_range_when_its_ks_fail():
    points = [point(2, 0.75, smallest_share=0.01), point(3, 0.60), point(4, 0.55), point(5, 0.5)]
    choice = selection.choose(points, RULES, Jaccards({5: 0.5, 4: 0.8}))
    assert choice.k == 4 and choice.structure == selection.CLEAR
    assert "no k near the best silhouette passed the guard rails; the largest k in the business range" in choice.reason


def test_guarded_says_so_when_no_k_passes_and_takes_the_closest():
    choice = selection.choose(FLAT, RULES, Jaccards({3: 0.6, 4: 0.7, 5: 0.65, 6: 0.5}))
    assert choice.k == 4
    assert "no candidate k had every segment at least 5.0% of customers and stable" in choice.reason
    assert choice.verdicts[4] == "chosen: closest to passing the guard rails"


def test_guarded_without_the_stability_guard_never_measures_it():
    choice = selection.choose(FLAT, RULES, None)
    assert choice.k == 6 and choice.stability == {}
    assert "stable" not in choice.reason


def test_guarded_business_range_outside_the_sweep_uses_the_sweep():
    choice = selection.choose(FLAT[:2], RULES, None)  # k = 2, 3 swept; range 3-6 overlaps at 3
    assert choice.k == 3
    narrow = selection.Rules(rule="guarded", tolerance=0.02, business_k=(8, 9))
    assert selection.choose(FLAT[:2], narrow, None).k == 3  # largest of the sweep 2-3


def test_plain_rules_and_fixed_k_keep_their_reasons():
    assert selection.choose(FLAT, selection.Rules(rule="silhouette", tolerance=0.05), None).k == 2
    elbow = selection.choose(FLAT, selection.Rules(rule="elbow", tolerance=0.0), None)
    assert elbow.rule == "elbow" and "knee" in elbow.reason
    assert selection.fixed(5).reason == "segment.k is 5 in the config"
    with pytest.raises(ValueError, match="unknown k selection rule 'gap'"):
        selection.choose(FLAT, selection.Rules(rule="gap", tolerance=0.0), None)


def test_guarded_closest_to_passing_prefers_segments_that_are_all_large_enough():
    # every k falls just short of stability; k=6 also has a micro-segment, so it was never
    # measured: it must not win on an unmeasured stability
    points = [*FLAT[:4], point(6, 0.42, smallest_share=0.01), FLAT[5]]
    choice = selection.choose(points, RULES, Jaccards({5: 0.70, 4: 0.74, 3: 0.72}))
    assert choice.k == 4 and choice.verdicts[6].startswith("rejected: smallest segment 1.0%")


def test_guarded_rejects_an_empty_segment_even_without_a_minimum_share():
    rules = selection.Rules(rule="guarded", tolerance=0.02, min_segment_share=0.0, business_k=(3, 6))
    points = [point(3, 0.45), point(4, 0.44, smallest_share=0.0)]
    choice = selection.choose(points, rules, None)
    assert choice.k == 3 and choice.verdicts[4] == "rejected: a segment is empty"


def test_guarded_ignores_undefined_silhouettes():
    # a Gaussian mixture that left components empty has no silhouette at that k
    nan = float("nan")
    points = [point(2, nan, smallest_share=0.0), point(3, 0.9), point(4, 0.6)]
    choice = selection.choose(points, RULES, None)
    assert (choice.k, choice.structure) == (3, selection.CLEAR)
    assert "the best silhouette, 0.900 at k=3" in choice.reason
    nothing = selection.choose([point(3, nan), point(4, nan)], RULES, None)
    assert nothing.structure == selection.NONE and "undefined at every k" in nothing.reason
    assert selection.choose(points, selection.Rules(rule="silhouette", tolerance=0.02), None).k == 3
