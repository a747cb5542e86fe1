"""Choosing k for use: the sweep's indices, then two guard rails that segments a
marketer acts on must pass, a minimum segment share and per-k stability.

The ``guarded`` rule first asks whether the data have a clear cluster structure: the
best silhouette of the sweep at least ``structure_silhouette``. With one, the candidates
are the ks whose silhouette is within ``tolerance`` of the best, smallest first (when the
data cannot tell them apart, the simpler segmentation wins). Without one, every k of the
sweep is about as good as the next, so the silhouette has nothing to say: the candidates
are the ks of the business range, largest first (the most segments that still pass).
Each candidate must then have no segment below ``min_segment_share`` of the customers,
and every segment stable, its mean best-match bootstrap Jaccard at least
``stability_threshold``. The first candidate that passes is chosen. Stability is measured
only for candidates that reach that test, one k at a time: each costs
``selection_bootstrap`` x ``restarts`` fits, for the ks that matter rather than for the
whole sweep. Every decision is kept as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from custseg.segment.evaluate import SweepPoint, elbow_k, silhouette_k

CLEAR = "clear"
NONE = "none"
GUARDED = "guarded"


@dataclass(frozen=True)
class Rules:
    """How k is chosen (segment.selection and its settings)."""

    rule: str  # guarded | silhouette | elbow
    tolerance: float  # silhouettes within this of the best are as good as the best
    min_segment_share: float = 0.0  # no segment below this share of the customers
    business_k: tuple[int, int] = (2, 2**31 - 1)  # without clear structure, k comes from this range
    structure_silhouette: float = 0.7  # a best silhouette at least this is a clear structure
    stability_threshold: float = 0.75  # every segment's mean bootstrap Jaccard at least this


@dataclass(frozen=True)
class Choice:
    """The chosen k and why, with a verdict for every k of the sweep."""

    k: int
    rule: str  # the rule that chose: guarded, silhouette, elbow or config
    reason: str  # why this k, in words
    structure: str | None = None  # clear or none (guarded only)
    verdicts: dict[int, str] = field(default_factory=dict)  # k -> why chosen, rejected or not considered
    stability: dict[int, float] = field(default_factory=dict)  # k -> lowest mean bootstrap Jaccard, when measured


def fixed(k: int) -> Choice:
    return Choice(k=k, rule="config", reason=f"segment.k is {k} in the config", verdicts={k: "set by segment.k"})


def choose(points: Sequence[SweepPoint], rules: Rules, stability_of: Callable[[int], float] | None = None) -> Choice:
    """The k of ``points`` that ``rules`` choose. ``stability_of(k)``, the lowest mean
    bootstrap Jaccard over k's segments, is called only for ks the guarded rule tests
    for stability, in order; None: that guard is off."""
    if not points:
        raise ValueError("the k sweep is empty")
    if rules.rule == "silhouette":
        best = _best(points)
        if best is None:
            raise ValueError("the silhouette rule needs a finite silhouette at some k of the sweep")
        k = silhouette_k(points, rules.tolerance)
        reason = (f"the smallest k whose silhouette ({_point(points, k).silhouette:.3f}) is within "
                  f"{rules.tolerance:g} of the best ({best.silhouette:.3f} at k={best.k})")  # fmt: skip
        return Choice(k=k, rule="silhouette", reason=reason, verdicts={k: f"chosen: {reason}"})
    if rules.rule == "elbow":
        k = elbow_k(points)
        reason = "the knee of the WCSS curve (farthest below the chord, both axes scaled to [0, 1])"
        return Choice(k=k, rule="elbow", reason=reason, verdicts={k: f"chosen: {reason}"})
    if rules.rule == GUARDED:
        return _guarded(points, rules, stability_of)
    raise ValueError(f"unknown k selection rule {rules.rule!r}")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _best(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The highest finite silhouette; ties go to the smaller k. None when no silhouette
    is finite (a mixture that left components empty has none)."""
    scored = [p for p in points if _finite(p.silhouette)]
    return max(scored, key=lambda p: (p.silhouette, -p.k)) if scored else None


def _point(points: Sequence[SweepPoint], k: int) -> SweepPoint:
    return next(p for p in points if p.k == k)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _guarded(points: Sequence[SweepPoint], rules: Rules, stability_of: Callable[[int], float] | None) -> Choice:
    best = _best(points)
    clear = best is not None and best.silhouette >= rules.structure_silhouette
    swept = sorted(p.k for p in points)
    lo, hi = rules.business_k
    in_range = [k for k in swept if lo <= k <= hi] or swept
    overlaps = any(lo <= k <= hi for k in swept)
    range_text = f"the business range {lo}-{hi}" if overlaps else f"the sweep {swept[0]}-{swept[-1]}"
    best_text = f"{best.silhouette:.3f} at k={best.k}" if best else "undefined at every k"
    if clear:
        near = [p.k for p in points if _finite(p.silhouette) and p.silhouette >= best.silhouette - rules.tolerance]
        candidates = sorted(near)
        structure = (f"clear cluster structure: the best silhouette, {best_text}, is at least "
                     f"{rules.structure_silhouette:g}")  # fmt: skip
        how = f"the smallest k whose silhouette is within {rules.tolerance:g} of the best"
    else:
        candidates = sorted(in_range, reverse=True)
        structure = (f"no clear cluster structure: the best silhouette, {best_text}, is below "
                     f"{rules.structure_silhouette:g}, so no k stands out")  # fmt: skip
        how = f"the largest k in {range_text}"
    verdicts: dict[int, str] = {
        k: "not considered: " + ("silhouette not within tolerance of the best" if clear else f"outside {range_text}")
        for k in swept
        if k not in candidates
    }
    stability: dict[int, float] = {}
    shares_passed: set[int] = set()

    def passes(k: int) -> bool:
        share = _point(points, k).smallest_share
        # An empty segment is a fit of fewer than k segments, whatever the minimum share.
        if share is not None and (share <= 0 or share < rules.min_segment_share):
            minimum = _share(rules.min_segment_share)
            verdicts[k] = f"rejected: smallest segment {_share(share)} of customers, below {minimum}" if share > 0 \
                else "rejected: a segment is empty"  # fmt: skip
            return False
        shares_passed.add(k)
        if stability_of is not None:
            stability[k] = stability_of(k)
            if stability[k] < rules.stability_threshold:
                verdicts[k] = (f"rejected: a segment's mean bootstrap Jaccard is {stability[k]:.2f}, below "
                               f"{rules.stability_threshold:g} (unstable)")  # fmt: skip
                return False
        return True

    guards = f"every segment at least {_share(rules.min_segment_share)} of customers" + (
        f" and stable (bootstrap Jaccard at least {rules.stability_threshold:g})" if stability_of else ""
    )
    chosen = next((k for k in candidates if passes(k)), None)
    if chosen is None and clear:  # the clear structure's ks fail the guard rails: fall back to the business range
        fallback = [k for k in sorted(in_range, reverse=True) if k not in candidates]
        for k in fallback:
            verdicts.pop(k, None)
        chosen = next((k for k in fallback if passes(k)), None)
        if chosen is not None:
            how = f"no k near the best silhouette passed the guard rails; the largest k in {range_text}"
        candidates = [*candidates, *fallback]
    tested = set(verdicts) | ({chosen} if chosen is not None else set())
    for k in candidates:  # the candidates the rule never reached: another passed first
        if k not in tested:
            verdicts[k] = f"not tested: k={chosen} passed first"
    if chosen is not None:
        reason = f"{structure}; k={chosen} is {how} with {guards}" + _measured(points, chosen, stability)
        verdicts[chosen] = "chosen"
        return Choice(k=chosen, rule=GUARDED, reason=reason, structure=CLEAR if clear else NONE,
                      verdicts=verdicts, stability=stability)  # fmt: skip

    # Nothing passes both guard rails: the least bad candidate, said plainly. A k whose
    # segments are all large enough beats one with a micro-segment or an empty one, then
    # the more stable, then the larger smallest segment, then the larger k.
    def least_bad(k: int) -> tuple[bool, float, float, int]:
        share = _point(points, k).smallest_share
        return (k in shares_passed, stability.get(k, 0.0), share if share is not None else 0.0, k)

    chosen = max(candidates, key=least_bad)
    reason = (f"{structure}; no candidate k had {guards}, so k={chosen} is the one closest to passing"
              + _measured(points, chosen, stability))  # fmt: skip
    verdicts[chosen] = "chosen: closest to passing the guard rails"
    return Choice(k=chosen, rule=GUARDED, reason=reason, structure=CLEAR if clear else NONE,
                  verdicts=verdicts, stability=stability)  # fmt: skip


def _measured(points: Sequence[SweepPoint], k: int, stability: dict[int, float]) -> str:
    point = _point(points, k)
    silhouette = f"{point.silhouette:.3f}" if _finite(point.silhouette) else "undefined"
    parts = [f"silhouette {silhouette}", f"smallest segment {_share(point.smallest_share)}"]
    if k in stability:
        parts.append(f"lowest bootstrap Jaccard {stability[k]:.2f}")
    return f" ({', '.join(parts)})"
