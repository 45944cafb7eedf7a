"""Confidence intervals: the percentile bootstrap over sequences (or NIAH cases), and Wilson's
score interval of a proportion.

The unit resampled is the sequence: its tokens share a context, so they are not independent
draws, while different sequences are (nearly so: they are disjoint windows of the val stream).
Each of `samples` resamples draws n sequence indices with replacement from one seeded
generator; the interval is the (2.5%, 97.5%) quantile pair of the statistic over resamples.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) indices in [0, n), drawn with replacement; the same for the same seed."""
    if n < 1 or samples < 1:
        raise ValueError(f"bootstrap needs n >= 1 and samples >= 1, got n={n}, samples={samples}")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def ratio_interval(
    numerators: np.ndarray, denominators: np.ndarray, samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of sum(numerators) / sum(denominators) over resampled sequences.

    numerators (n, ...) (e.g. per-sequence loss sums, or per-sequence bucket means),
    denominators (n,) (tokens per sequence, or ones for a plain mean). Returns (lo, hi), each of
    shape numerators.shape[1:]. With n = 1 the interval is the point estimate itself.
    """
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.asarray(denominators, dtype=np.float64)
    index = resample_indices(len(numerators), samples, seed)
    stats = numerators[index].sum(axis=1) / denominators[index].sum(axis=1).reshape(
        (samples,) + (1,) * (numerators.ndim - 1)
    )
    tail = (1.0 - CONFIDENCE) / 2
    lo, hi = np.quantile(stats, [tail, 1.0 - tail], axis=0)
    return lo, hi


def mean_interval(values: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of the mean over axis 0 of values (n, ...): `ratio_interval` with unit
    denominators."""
    values = np.asarray(values, dtype=np.float64)
    return ratio_interval(values, np.ones(len(values)), samples, seed)


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% for the default z) of a proportion `successes / n`; unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n successes. Fractional
    `successes` (NIAH credit shared by tied candidates) are allowed."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval needs n >= 1 and 0 <= successes <= n, got {successes}/{n}"
        )
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def format_interval(lo: float, hi: float) -> str:
    """`[lo, hi]` to 4 significant digits, as the summaries print intervals."""
    return f"[{lo:.4g}, {hi:.4g}]"
