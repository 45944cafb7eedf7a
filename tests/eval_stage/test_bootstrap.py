"""bootstrap: intervals hold the estimate, shrink with more sequences, repeat with the seed."""

from __future__ import annotations

import numpy as np
import pytest

from eval_stage.bootstrap import mean_interval, ratio_interval, resample_indices


def _losses(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 1.5, size=(n, 3))  # (n sequences, 3 buckets)


def test_the_interval_contains_the_mean_and_repeats_with_the_seed() -> None:
    values = _losses(50)
    lo, hi = mean_interval(values, samples=500, seed=3)
    assert lo.shape == hi.shape == (3,)
    assert np.all(lo < values.mean(axis=0)) and np.all(values.mean(axis=0) < hi)
    again = mean_interval(values, samples=500, seed=3)
    np.testing.assert_array_equal(again[0], lo)
    np.testing.assert_array_equal(again[1], hi)
    other = mean_interval(values, samples=500, seed=4)
    assert not np.array_equal(other[0], lo)


def test_the_interval_shrinks_with_more_sequences() -> None:
    # The same spread over 4x the sequences (the data tiled): the width falls like
    # 1 / sqrt(n), i.e. halves.
    values = _losses(32)
    lo, hi = mean_interval(values, samples=2000, seed=0)
    lo4, hi4 = mean_interval(np.tile(values, (4, 1)), samples=2000, seed=0)
    np.testing.assert_allclose((hi4 - lo4) / (hi - lo), 0.5, atol=0.08)


def test_the_interval_matches_the_normal_approximation_for_many_sequences() -> None:
    values = _losses(2000)[:, 0]
    lo, hi = mean_interval(values, samples=2000, seed=0)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(values.mean(), abs=0.1 * half)


def test_a_ratio_is_resampled_as_whole_sequences() -> None:
    sums, tokens = np.array([10.0, 30.0, 20.0]), np.array([5.0, 10.0, 5.0])
    lo, hi = ratio_interval(sums, tokens, samples=400, seed=0)
    assert 2.0 <= lo < sums.sum() / tokens.sum() < hi <= 4.0  # per-sequence ratios 2, 3, 4
    # the same index draws as a hand computation
    index = resample_indices(3, 400, 0)
    stats = sums[index].sum(axis=1) / tokens[index].sum(axis=1)
    assert (lo, hi) == tuple(np.quantile(stats, [0.025, 0.975]))


def test_one_sequence_gives_a_point_and_none_is_refused() -> None:
    lo, hi = mean_interval(np.array([[1.5, 2.5]]), samples=100, seed=0)
    np.testing.assert_array_equal(lo, [1.5, 2.5])
    np.testing.assert_array_equal(hi, [1.5, 2.5])
    with pytest.raises(ValueError, match="n >= 1"):
        mean_interval(np.zeros((0, 2)), samples=100, seed=0)
