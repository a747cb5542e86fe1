from __future__ import annotations

import itertools
import random

from custseg.segment.matching import assign


def brute_force(cost):
    rows, cols = len(cost), len(cost[0])
    if rows <= cols:
        return min(
            sum(cost[r][c] for r, c in zip(range(rows), p, strict=True))
            for p in itertools.permutations(range(cols), rows)
        )
    return min(
        sum(cost[r][c] for r, c in zip(p, range(cols), strict=True)) for p in itertools.permutations(range(rows), cols)
    )


def test_assign_worked_example():
    # every other matching costs more: e.g. the diagonal is 4 + 0 + 2 = 6
    cost = [[4, 1, 3], [2, 0, 5], [3, 2, 2]]
    assert assign(cost) == [(0, 1), (1, 0), (2, 2)]  # 1 + 2 + 2 = 5


def test_assign_rectangular_uses_each_side_once():
    assert assign([[9, 1], [1, 9], [5, 5]]) == [(0, 1), (1, 0)]
    assert assign([[9, 1, 5], [1, 9, 5]]) == [(0, 1), (1, 0)]


def test_assign_matches_brute_force_on_random_matrices():
    rng = random.Random(7)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        cost = [[rng.random() for _ in range(cols)] for _ in range(rows)]
        pairs = assign(cost)
        assert len(pairs) == min(rows, cols)
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
        assert abs(sum(cost[r][c] for r, c in pairs) - brute_force(cost)) < 1e-9
