"""Small-sample statistics for the benchmarks: Wilson intervals for proportions, and
bootstrap intervals (resampling problems, seeded) for means, differences and ratios."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits/n (sound where n is small or the
    proportion is near 0 or 1, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: Sequence[Sequence[float]], stat, resamples: int = 2000, seed: int = 0
              ) -> tuple[float, float]:
    """95% percentile interval of stat(*columns) with the rows (problems) resampled: values is
    a list of rows, each row one problem's numbers (paired across arms)."""
    rng = random.Random(seed)
    rows = list(values)
    out = []
    for _ in range(resamples):
        pick = [rows[rng.randrange(len(rows))] for _ in rows]
        out.append(stat(*zip(*pick, strict=True)))
    out.sort()
    return (out[int(0.025 * resamples)], out[int(0.975 * resamples) - 1])


def mean_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of a mean."""
    return bootstrap([(v,) for v in values], statistics.mean, seed=seed)


def ratio_ci(base: Sequence[float], arm: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(base) / mean(arm) (a speed-up)."""
    return bootstrap(list(zip(base, arm, strict=True)),
                     lambda b, a: statistics.mean(b) / max(statistics.mean(a), 1e-9), seed=seed)


def diff_ci(base: Sequence[float], arm: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(arm) - mean(base)."""
    return bootstrap(list(zip(base, arm, strict=True)),
                     lambda b, a: statistics.mean(a) - statistics.mean(b), seed=seed)
