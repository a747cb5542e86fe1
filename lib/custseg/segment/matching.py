"""Minimum-cost assignment between two small sets (segments of two models)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def assign(cost: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """The (row, column) pairs of a minimum-total-cost matching of a rows x cols matrix:
    min(rows, cols) pairs, every row and column used at most once (the Hungarian
    method with potentials, O(n^3); n is a number of segments, so it runs on the driver).
    Ties resolve the same way every time, so the result is deterministic."""
    rows = len(cost)
    cols = len(cost[0]) if rows else 0
    if not rows or not cols:
        return []
    transposed = rows > cols  # the method below needs rows <= cols
    matrix = [list(r) for r in zip(*cost, strict=True)] if transposed else [list(r) for r in cost]
    n, m = len(matrix), len(matrix[0])
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j]: the row matched to column j (1-based; 0: none)
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [math.inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = matrix[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    pairs = [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
    if transposed:
        pairs = [(col, row) for row, col in pairs]
    return sorted(pairs)
