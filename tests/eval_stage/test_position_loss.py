"""position-loss: buckets, long sequences from consecutive val rows, curves for both models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from data_stage import ShardDataset
from eval_stage import (
    EvalInputError,
    PositionLossConfig,
    evaluate_position_loss,
    open_model,
    publish,
    read_result,
)
from eval_stage.data import long_sequences
from eval_stage.position_loss import bucket_edges, mean_loss_by_position

from .helpers import VOCAB, UniformLM, as_loaded


@pytest.mark.parametrize("kind", ["log", "linear"])
@pytest.mark.parametrize(("length", "n"), [(1, 4), (32, 8), (100, 16), (4096, 16)])
def test_bucket_edges_cover_each_token_index_once(kind: str, length: int, n: int) -> None:
    edges = bucket_edges(length, n, kind)
    assert edges[0] == 1 and edges[-1] == length + 1
    assert edges == sorted(set(edges))  # strictly increasing
    assert len(edges) - 1 <= n


def test_long_sequences_are_consecutive_val_rows_concatenated(shard_dir: Path) -> None:
    ds = ShardDataset(shard_dir, "val")
    stream = ds.get_many(np.arange(8)).reshape(-1)  # 8 rows of 33 ids
    seqs = long_sequences(ds, 64, 3)  # 3 x 65 ids
    assert seqs.shape == (3, 65)
    np.testing.assert_array_equal(seqs.reshape(-1), stream[: 3 * 65])


def test_uniform_model_has_loss_log_vocab_at_every_position(shard_dir: Path) -> None:
    seqs = long_sequences(ShardDataset(shard_dir, "val"), 40, 5)
    per_position = mean_loss_by_position(UniformLM(VOCAB), seqs, batch_size=2)
    assert per_position.shape == (40,)
    np.testing.assert_allclose(per_position, math.log(VOCAB), rtol=1e-6)


def test_curves_of_model_and_baseline_at_each_length_with_plot(
    shard_dir: Path, model_dir: Path, baseline_dir: Path, tmp_path: Path
) -> None:
    config = PositionLossConfig(data=shard_dir, multipliers=[1, 3], sequences=4, n_buckets=6)
    result = evaluate_position_loss(open_model(model_dir), config, open_model(baseline_dir))
    files = publish(result, tmp_path)
    assert [f.name for f in files] == ["position_loss.json", "position_loss.png"]
    saved = read_result(files[0])
    assert saved.plots == ["position_loss.png"] and saved.config["train_len"] == 32
    rows = saved.tables["buckets"]
    for role in ("model", "baseline"):
        for length in (32, 96):
            mine = [r for r in rows if r["role"] == role and r["length"] == length]
            assert mine[0]["start"] == 1 and mine[-1]["end"] == length
            assert sum(r["tokens"] for r in mine) == 4 * length
            assert all(math.isfinite(r["mean_loss"]) for r in mine)
            assert math.isfinite(saved.metrics[f"position_loss/{role}/len_{length}/mean_loss"])


def test_lengths_beyond_the_val_stream_are_refused(shard_dir: Path) -> None:
    config = PositionLossConfig(data=shard_dir, train_len=2000, multipliers=[1, 4])
    with pytest.raises(EvalInputError, match="fewer than one sequence of 8001"):
        evaluate_position_loss(as_loaded(UniformLM(VOCAB)), config)


def test_train_len_defaults_to_the_length_the_model_was_trained_at(shard_dir: Path) -> None:
    """An export records its training seq_len; 1x means that, not the shards' row length."""
    config = PositionLossConfig(data=shard_dir, multipliers=[1, 2], sequences=2, n_buckets=2)
    trained_at_16 = as_loaded(UniformLM(VOCAB), seq_len=16)
    assert evaluate_position_loss(trained_at_16, config).config["train_len"] == 16
    unknown = as_loaded(UniformLM(VOCAB))  # no provenance: the shards' row length
    assert evaluate_position_loss(unknown, config).config["train_len"] == 32
