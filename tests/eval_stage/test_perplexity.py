"""perplexity: token-exact mean loss, perplexity = exp(mean), cropping, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_stage import ShardDataset
from eval_stage import EvalInputError, PerplexityConfig, evaluate_perplexity, open_model
from eval_stage.perplexity import summarize

from .helpers import VOCAB, UniformLM, as_loaded, tiny_model


def test_uniform_logits_give_perplexity_equal_to_vocab_size(shard_dir: Path) -> None:
    result = evaluate_perplexity(as_loaded(UniformLM(VOCAB)), PerplexityConfig(data=shard_dir))
    val = ShardDataset(shard_dir, "val")
    loss = result.metrics["perplexity/model/loss"]
    # Per-token CE is fp32 (log 400 to ~1e-8); the sum over tokens is float64.
    assert loss == pytest.approx(math.log(VOCAB), rel=1e-7)
    assert result.metrics["perplexity/model/perplexity"] == math.exp(loss)
    assert result.metrics["perplexity/model/perplexity"] == pytest.approx(VOCAB, rel=1e-6)
    assert result.metrics["perplexity/model/tokens"] == len(val) * val.seq_len


def test_loss_is_the_mean_over_every_token_of_ragged_batches(shard_dir: Path) -> None:
    model = tiny_model()
    config = PerplexityConfig(data=shard_dir, batch_size=7, seq_len=20)
    result = evaluate_perplexity(as_loaded(model), config)
    rows = ShardDataset(shard_dir, "val").get_many(np.arange(len(ShardDataset(shard_dir, "val"))))
    ids = torch.as_tensor(rows[:, :21], dtype=torch.long)
    with torch.no_grad():  # one row at a time: independent of the eval's batching
        sums = [F.cross_entropy(model(r[None, :-1]).logits[0], r[1:], reduction="sum") for r in ids]
    expected = float(torch.stack(sums).double().sum()) / (len(rows) * 20)
    assert result.metrics["perplexity/model/loss"] == pytest.approx(expected, rel=1e-6)
    assert result.metrics["perplexity/model/perplexity"] == pytest.approx(
        math.exp(expected), rel=1e-6
    )
    assert result.tables["perplexity"][0]["sequences"] == len(rows)


def test_the_interval_is_a_seeded_bootstrap_over_rows(shard_dir: Path) -> None:
    model = as_loaded(tiny_model())

    def run(max_batches: int = 8, **overrides) -> dict:
        config = PerplexityConfig(data=shard_dir, bootstrap_samples=300, max_batches=max_batches,
                                  **overrides)  # fmt: skip
        return evaluate_perplexity(model, config).tables["perplexity"][0]

    row = run(bootstrap_seed=1)
    assert row["loss_lo"] < row["loss"] < row["loss_hi"]
    assert row["perplexity_lo"] == math.exp(row["loss_lo"])
    assert row["perplexity_hi"] == math.exp(row["loss_hi"])
    assert run(bootstrap_seed=1) == row
    assert run(bootstrap_seed=2)["loss_lo"] != row["loss_lo"]
    few = run(bootstrap_seed=1, max_batches=1)  # 8 rows instead of 64
    assert few["loss_hi"] - few["loss_lo"] > row["loss_hi"] - row["loss_lo"]


def test_summary_states_the_intervals(shard_dir: Path) -> None:
    config = PerplexityConfig(data=shard_dir, max_batches=2)
    row = (result := evaluate_perplexity(as_loaded(tiny_model()), config)).tables["perplexity"][0]
    text = summarize(result)
    assert "loss 95% CI" in text and f"[{row['loss_lo']:.4g}, {row['loss_hi']:.4g}]" in text
    for name in ("loss_lo", "loss_hi", "perplexity_lo", "perplexity_hi"):
        assert result.metrics[f"perplexity/model/{name}"] == row[name]


def test_max_batches_and_seq_len_bound_the_tokens_counted(shard_dir: Path) -> None:
    config = PerplexityConfig(data=shard_dir, batch_size=4, seq_len=16, max_batches=2)
    result = evaluate_perplexity(as_loaded(UniformLM(VOCAB)), config)
    assert result.metrics["perplexity/model/tokens"] == 2 * 4 * 16


def test_baseline_is_evaluated_alongside(
    shard_dir: Path, model_dir: Path, baseline_dir: Path
) -> None:
    config = PerplexityConfig(data=shard_dir, max_batches=2)
    result = evaluate_perplexity(open_model(model_dir), config, open_model(baseline_dir))
    assert [m.mixer for m in result.models] == ["ttt_linear", "attention"]
    assert [m.step for m in result.models] == [7, 7]
    for role in ("model", "baseline"):
        assert math.isfinite(result.metrics[f"perplexity/{role}/perplexity"])


def test_seq_len_longer_than_the_shards_is_refused(shard_dir: Path) -> None:
    with pytest.raises(EvalInputError, match="longer than the shards"):
        evaluate_perplexity(
            as_loaded(UniformLM(VOCAB)), PerplexityConfig(data=shard_dir, seq_len=33)
        )


def test_shards_of_a_larger_vocabulary_are_refused(shard_dir: Path) -> None:
    with pytest.raises(EvalInputError, match="vocab_size 300"):
        evaluate_perplexity(as_loaded(UniformLM(300)), PerplexityConfig(data=shard_dir))


def test_a_missing_shard_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvalInputError, match="validation data"):
        evaluate_perplexity(as_loaded(UniformLM(VOCAB)), PerplexityConfig(data=tmp_path / "none"))
