"""`--init-from`: a new run starts from an export's or a run's weights (context extension), with
its own seq_len and rope_theta; a source of another shape is refused before anything is
written (train_stage/init_from.py)."""

from __future__ import annotations

import pytest
import torch
import yaml

from train_stage.export import export_model, load_run_model

from .conftest import run_in_process, run_train

TINY = ("--preset", "debug_tiny", "--no-mlflow", "--save-every", "0")


@pytest.fixture(scope="module")
def pretrained(tiny_shards, tmp_path_factory):
    """A 3-step run at seq_len 32 and its export."""
    run_dir = tmp_path_factory.mktemp("init") / "pre"
    run_train(*TINY, "--seq-len", "32", "--steps", "3", "--data", str(tiny_shards),
              "--run-dir", str(run_dir))  # fmt: skip
    export = export_model(run_dir, run_dir.parent / "export")
    return run_dir, export


def weights(run_dir):
    return load_run_model(run_dir).model.state_dict()


@pytest.mark.parametrize("source", ["run_dir", "export"])
def test_an_extension_starts_from_the_source_weights(
    pretrained, tiny_shards, tmp_path, capsys, source
):
    run_dir, export = pretrained
    origin = run_dir if source == "run_dir" else export
    common = (*TINY, "--data", str(tiny_shards), "--seq-len", "64", "--steps", "1", "--lr", "1e-12")
    extended = tmp_path / "ext"
    result = run_in_process(
        capsys, *common, "--run-dir", str(extended), "--init-from", str(origin),
        "--model.rope-theta", "40000",
    )  # fmt: skip
    assert "starting from the weights of" in result.stderr
    assert "rope_theta 10000.0 -> 40000.0" in result.stderr
    fresh = tmp_path / "fresh"
    run_in_process(capsys, *common, "--run-dir", str(fresh))
    start, after, unrelated = weights(run_dir), weights(extended), weights(fresh)
    for name, tensor in start.items():  # one step of lr 1e-12 moves a weight by ~1e-12
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=1e-8)
    assert any(not torch.allclose(unrelated[n], t, atol=1e-3) for n, t in start.items())
    recorded = yaml.safe_load((extended / "config.yaml").read_text())
    assert recorded["init_from"] == str(origin) and recorded["model"]["rope_theta"] == 40000.0
    assert recorded["seq_len"] == 64


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--model.d-model", "128"), "a model of another shape (d_model: 64 vs 128)"),
        (("--mixer", "attention"), "mixer: 'ttt_linear' vs 'attention'"),
    ],
)
def test_a_source_of_another_shape_is_refused_naming_the_fields(
    pretrained, tiny_shards, tmp_path, capsys, extra, message
):
    run_dir, _ = pretrained
    out = tmp_path / "ext"
    result = run_in_process(
        capsys, *TINY, "--data", str(tiny_shards), "--run-dir", str(out), "--steps", "1",
        "--init-from", str(run_dir), *extra, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_a_path_that_is_no_model_is_refused(tiny_shards, tmp_path, capsys):
    out = tmp_path / "ext"
    result = run_in_process(
        capsys, *TINY, "--data", str(tiny_shards), "--run-dir", str(out), "--steps", "1",
        "--init-from", str(tmp_path), check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "neither an export" in result.stderr, result.stderr
    assert not out.exists()
