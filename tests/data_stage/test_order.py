"""SampleOrder: rank partition, exact resume, elastic resume across world sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_stage import SampleOrder


def run_steps(order: SampleOrder, world: int, batch: int, steps: int) -> list[list[np.ndarray]]:
    """`steps` global steps; each is the list of per-rank index arrays."""
    out = []
    for _ in range(steps):
        out.append([order.next_batch_indices(r, world, batch) for r in range(world)])
        order.advance(world, batch)
    return out


def flat(steps: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([a for step in steps for a in step]) if steps else np.empty(0, np.int64)


@settings(max_examples=150, deadline=None)
@given(
    world=st.integers(1, 8),
    batch=st.integers(1, 5),
    extra=st.integers(0, 60),
    seed=st.integers(0, 2**32),
)
def test_one_epoch_is_disjoint_equal_shares_covering_all_but_the_tail(
    world: int, batch: int, extra: int, seed: int
) -> None:
    n = world * batch + extra
    order = SampleOrder(n, seed)
    steps = order.steps_per_epoch(world, batch)
    epoch = run_steps(order, world, batch, steps)
    per_rank = [np.concatenate([step[r] for step in epoch]) for r in range(world)]
    assert all(len(p) == steps * batch for p in per_rank)
    seen = np.concatenate(per_rank)
    assert len(np.unique(seen)) == len(seen)  # disjoint, no repeats
    assert n - len(seen) == n % (world * batch) < world * batch  # documented tail
    assert np.array_equal(np.sort(seen), np.sort(order.permutation(0)[: len(seen)]))
    # The next step starts the next epoch.
    order.next_batch_indices(0, world, batch)
    order.advance(world, batch)
    assert (order.epoch, order.consumed) == (1, world * batch)


def test_epochs_use_different_seeded_permutations() -> None:
    a, b = SampleOrder(100, seed=3), SampleOrder(100, seed=3)
    assert np.array_equal(a.permutation(0), b.permutation(0))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not np.array_equal(a.permutation(0), SampleOrder(100, seed=4).permutation(0))
    assert np.array_equal(np.sort(a.permutation(5)), np.arange(100))


@pytest.mark.parametrize("stop", [3, 10, 17, 25])
def test_resume_continues_exactly_mid_epoch_and_across_epochs(stop: int) -> None:
    world, batch, n = 3, 4, 100  # 8 steps per epoch, tail of 4
    straight = run_steps(SampleOrder(n, seed=11), world, batch, 30)
    first = SampleOrder(n, seed=11)
    before = run_steps(first, world, batch, stop)
    state = first.state_dict()
    assert set(state) == {"seed", "num_samples", "epoch", "consumed"}
    resumed = SampleOrder(n, seed=11)
    resumed.load_state_dict(dict(state))
    after = run_steps(resumed, world, batch, 30 - stop)
    assert np.array_equal(flat(before + after), flat(straight))


def epoch_samples_under_world_change(
    n: int, batch: int, w0: int, steps0: int, w1: int
) -> tuple[np.ndarray, SampleOrder]:
    """Run `steps0` steps at world `w0`, resume at world `w1` to the end of epoch 0."""
    order = SampleOrder(n, seed=5)
    before = flat(run_steps(order, w0, batch, steps0))
    resumed = SampleOrder(n, seed=5)
    resumed.load_state_dict(order.state_dict())
    after = run_steps(resumed, w1, batch, resumed.steps_left_in_epoch(w1, batch))
    return np.concatenate([before, flat(after)]), resumed


@pytest.mark.parametrize(("w0", "w1"), [(2, 1), (1, 3)])
def test_elastic_resume_neither_repeats_nor_skips_a_sample_of_the_epoch(w0: int, w1: int) -> None:
    n, batch = 103, 4
    seen, order = epoch_samples_under_world_change(n, batch, w0, steps0=5, w1=w1)
    assert len(np.unique(seen)) == len(seen)
    # Everything consumed is exactly the epoch permutation's prefix; only a tail < w1*B is left.
    assert np.array_equal(seen, order.permutation(0)[: len(seen)])
    assert 0 <= n - len(seen) < w1 * batch
    assert (order.epoch, order.consumed) == (0, len(seen))


def test_state_from_another_dataset_or_seed_is_refused() -> None:
    order = SampleOrder(50, seed=1)
    with pytest.raises(ValueError, match="num_samples=60"):
        order.load_state_dict({"seed": 1, "num_samples": 60, "epoch": 0, "consumed": 0})
    with pytest.raises(ValueError, match="seed=2"):
        order.load_state_dict({"seed": 2, "num_samples": 50, "epoch": 0, "consumed": 0})


def test_step_larger_than_the_dataset_and_bad_rank_are_refused() -> None:
    order = SampleOrder(10)
    with pytest.raises(ValueError, match="world \\* batch_size = 12"):
        order.next_batch_indices(0, 3, 4)
    with pytest.raises(ValueError, match="rank 3 outside"):
        order.next_batch_indices(3, 3, 1)
