"""long-context: several models on the same val sequences, paired against the first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_stage import ShardDataset
from eval_stage.bootstrap import wilson_interval
from eval_stage.config import LongContextConfig
from eval_stage.long_context import evaluate_long_context, metrics
from ttt_core import PRESETS, TTTLM, ModelConfig, family_settings

from .helpers import VOCAB, as_loaded, run_cli, tiny_model, write_export

LENGTHS = [128, 256]
FLAGS = ["--lengths", *map(str, LENGTHS), "--sequences", "4", "--niah-trials", "2",
         "--niah-depths", "0.5", "--niah-digits", "2", "--niah-candidates", "3",
         "--decode-tokens", "2", "--bootstrap-samples", "200"]  # fmt: skip
ROW_KEYS = {"model", "mixer", "length", "loss", "loss_diff_vs_reference", "diff_ci95",
            "niah_accuracy", "niah_ci95", "state_bytes", "decode_ms_per_token", "peak_rss_mb"}  # fmt: skip


@pytest.fixture(scope="module")
def none_dir(tmp_path_factory, tokenizer_dir: Path) -> Path:
    return write_export(tiny_model("none"), tmp_path_factory.mktemp("m") / "none", tokenizer_dir)


@pytest.fixture(scope="module")
def written(tmp_path_factory, model_dir: Path, baseline_dir: Path, none_dir: Path,
            shard_dir: Path) -> Path:  # fmt: skip
    """The CLI's output for ttt_linear (the reference), attention and none."""
    out = tmp_path_factory.mktemp("lc") / "out"
    argv = ["long-context", "--model", str(model_dir), "--model", str(baseline_dir),
            "--model", str(none_dir), "--data", str(shard_dir), "--out", str(out), *FLAGS]  # fmt: skip
    assert run_cli(argv) == 0
    return out


def _rows(out: Path) -> dict[tuple[str, int], dict]:
    saved = json.loads((out / "long_context.json").read_text())
    return {(r["model"], r["length"]): r for r in saved["rows"]}


def _second_half_losses(model: TTTLM, shard_dir: Path, length: int, n: int) -> np.ndarray:
    """Per sequence, the mean loss of tokens length/2+1..length, computed from the shards' rows
    directly (not through eval_stage's readers)."""
    ds = ShardDataset(shard_dir, "val")
    stream = np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64)
    ids = torch.from_numpy(stream[: n * (length + 1)].reshape(n, length + 1))
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return losses[:, length // 2 :].mean(dim=1).double().numpy()


def test_json_has_one_row_per_model_and_length(written: Path) -> None:
    saved = json.loads((written / "long_context.json").read_text())
    assert saved["reference"] == "ttt_linear" and saved["lengths"] == LENGTHS
    assert [(r["model"], r["length"]) for r in saved["rows"]] == [
        (m, L) for L in LENGTHS for m in ("ttt_linear", "attention", "none")
    ]
    for row in saved["rows"]:
        assert set(row) >= ROW_KEYS
        lo, hi = row["diff_ci95"]
        assert lo <= row["loss_diff_vs_reference"] <= hi
        lo, hi = row["niah_ci95"]
        assert 0 <= lo <= row["niah_accuracy"] <= hi <= 1 and row["niah_cases"] == 2
    reference = [r for r in saved["rows"] if r["model"] == "ttt_linear"]
    assert all(r["loss_diff_vs_reference"] == 0 and r["diff_ci95"] == [0, 0] for r in reference)
    assert saved["plots"] == ["long_context.png"]
    assert (written / "long_context.png").stat().st_size > 0
    table = (written / "long_context.md").read_text()
    assert "| attention | 256 |" in table and "paired bootstrap" in table


def test_losses_and_paired_intervals_match_an_independent_computation(
    written: Path, model_dir: Path, baseline_dir: Path, shard_dir: Path
) -> None:
    rows = _rows(written)
    ttt = _second_half_losses(tiny_model("ttt_linear"), shard_dir, 256, 4)
    attention = _second_half_losses(tiny_model("attention"), shard_dir, 256, 4)
    assert rows[("ttt_linear", 256)]["loss"] == pytest.approx(ttt.mean(), abs=1e-5)
    assert rows[("attention", 256)]["loss"] == pytest.approx(attention.mean(), abs=1e-5)
    diff = attention - ttt
    row = rows[("attention", 256)]
    assert row["loss_diff_vs_reference"] == pytest.approx(diff.mean(), abs=1e-5)
    # the paired percentile bootstrap by its definition: resample sequences, mean difference
    index = np.random.default_rng(0).integers(0, 4, size=(200, 4))
    expected = np.quantile(diff[index].mean(axis=1), [0.025, 0.975])
    assert row["diff_ci95"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_attention_state_holds_its_tokens_and_ttt_state_is_flat(written: Path) -> None:
    rows = _rows(written)
    config = ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, mixer="attention")
    per_token = config.n_layers * 2 * config.d_model * 4  # keys and values, fp32
    grown = rows[("attention", 256)]["state_bytes"] - rows[("attention", 128)]["state_bytes"]
    assert grown == 128 * per_token
    assert rows[("ttt_linear", 256)]["state_bytes"] == rows[("ttt_linear", 128)]["state_bytes"]
    assert rows[("ttt_linear", 128)]["state_bytes"] > rows[("none", 128)]["state_bytes"]
    for row in rows.values():
        assert row["decode_ms_per_token"] > 0 and row["peak_rss_mb"] >= 0


@pytest.mark.parametrize("family", ["lact", "swa", "e2e"])
def test_every_family_is_evaluated(family: str, shard_dir: Path) -> None:
    settings = family_settings(family, PRESETS["debug_tiny"])
    torch.manual_seed(0)
    model = TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, **settings)).eval()
    config = LongContextConfig(data=shard_dir, lengths=[64], sequences=2, niah_trials=0,
                               decode_tokens=2, bootstrap_samples=100)  # fmt: skip
    reference = as_loaded(tiny_model("none"), source="none")
    result = evaluate_long_context([reference, as_loaded(model, source=family)], config)
    row = result.row(result.models[1].name, 64)
    expected = _second_half_losses(model, shard_dir, 64, 2).mean()
    assert row.loss == pytest.approx(expected, abs=1e-5)
    assert row.niah_accuracy is None and row.niah_ci95 is None and row.state_bytes > 0


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_metric_keys_are_ones_mlflow_accepts(shard_dir: Path) -> None:
    config = LongContextConfig(data=shard_dir, lengths=[64], sequences=2, niah_trials=0,
                               decode_tokens=1, bootstrap_samples=100)  # fmt: skip
    models = [as_loaded(tiny_model("none", seed=s), source=f"runs/s{s}") for s in (0, 1)]
    result = evaluate_long_context(models, config)
    assert [m.name for m in result.models] == ["none (s0)", "none (s1)"]
    keys = metrics(result)
    assert "long_context/none _s1_/len_64/loss_diff_vs_reference" in keys
    assert all("(" not in key and ")" not in key for key in keys)


def test_refusals_are_one_line_and_write_nothing(
    model_dir: Path, baseline_dir: Path, shard_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    base = ["long-context", "--model", str(model_dir), "--data", str(shard_dir)]
    cases = [
        [*base, "--lengths", "64"],  # no --out
        [*base, "--model", str(model_dir), "--out", str(out)],  # a model twice
        [*base, "--lengths", "1000000", "--out", str(out)],  # longer than val
        [*base, "--lengths", "16", "--out", str(out)],  # no room for the passkey prompt
        [*base, "--lengths", "256", "128", "--out", str(out)],
        [*base, "--lengths", "64", "--sequences", "nan", "--out", str(out)],
    ]
    for argv in cases:
        assert run_cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "long-context" in err, (argv, err)
        assert not out.exists()


def test_a_copied_model_is_its_own_reference(
    model_dir: Path, shard_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    out = tmp_path / "out"
    argv = ["long-context", "--model", str(model_dir), "--model", str(copy), "--data",
            str(shard_dir), "--out", str(out), "--lengths", "64", "--sequences", "3",
            "--niah-trials", "0", "--decode-tokens", "1", "--bootstrap-samples", "100"]  # fmt: skip
    assert run_cli(argv) == 0
    row = _rows(out)[("ttt_linear (copy)", 64)]
    assert row["loss_diff_vs_reference"] == 0 and row["diff_ci95"] == [0, 0]
