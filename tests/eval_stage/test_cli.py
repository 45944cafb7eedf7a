"""The CLI: default output next to the model, one-line refusals with exit 2 and nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval_stage import EvalInputError, open_model, read_result

from .helpers import run_cli


def test_results_are_written_next_to_the_export_by_default(
    model_dir: Path, shard_dir: Path, capsys
) -> None:
    argv = ["perplexity", "--model", str(model_dir), "--data", str(shard_dir), "--max-batches", "1"]
    assert run_cli(argv) == 0
    result = read_result(model_dir / "eval" / "perplexity.json")
    assert result.models[0].source == str(model_dir) and result.models[0].step == 7
    out = capsys.readouterr().out
    assert "perplexity" in out and str(model_dir / "eval" / "perplexity.json") in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["perplexity", "--model", "{tmp}/missing", "--data", "{shards}"], "no such model directory"),
     (["perplexity", "--model", "{model}", "--data", "{tmp}/none"], "validation data"),
     (["perplexity", "--model", "{model}", "--data", "{shards}", "--seq-len", "99"], "longer than"),
     (["perplexity", "--model", "{model}", "--data", "{shards}", "--batch-size", "0"], "invalid config"),
     (["perplexity", "--model", "{model}", "--baseline", "{tmp}/nope", "--data", "{shards}"], "nope"),
     (["perplexity", "--model", "{model}", "--data", "{shards}", "--device", "cuda"], "cuda"),
     (["position-loss", "--model", "{model}", "--data", "{shards}", "--multipliers", "1", "999"],
      "fewer than one sequence"),
     (["position-loss", "--model", "{model}", "--data", "{shards}", "--buckets", "sqrt"], "invalid choice"),
     (["niah", "--model", "{model}", "--data", "{shards}", "--depths", "0", "1.5"], "less than or equal"),
     (["niah", "--model", "{model}", "--data", "{shards}", "--contexts", "20"], "cannot hold"),
     (["perplexity", "--data", "{shards}"], "--model")],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    argv, message, model_dir: Path, shard_dir: Path, tmp_path: Path, capsys
) -> None:
    if message == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    fill = {"tmp": str(tmp_path), "model": str(model_dir), "shards": str(shard_dir)}
    out = tmp_path / "out"
    assert run_cli([a.format(**fill) for a in argv] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_out_that_is_a_file_is_refused(
    model_dir: Path, shard_dir: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "file").write_text("")
    argv = [
        "perplexity",
        "--model",
        str(model_dir),
        "--data",
        str(shard_dir),
        "--out",
        str(tmp_path / "file"),
    ]
    assert run_cli(argv) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_module_entry_point_refuses_missing_model(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "eval_stage",
        "niah",
        "--model",
        str(tmp_path / "nope"),
        "--data",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("eval_stage niah: error: ")
        and "no such model directory" in proc.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weights_are_bad_input(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EvalInputError, match="cannot load model"):
        open_model(broken)


def test_a_flipped_byte_in_an_export_is_refused_naming_the_file(
    model_dir: Path, shard_dir: Path, tmp_path: Path, capsys
) -> None:
    for name in ("model.safetensors", "tokenizer/tokenizer.model"):
        broken = tmp_path / name.replace("/", "_")
        shutil.copytree(model_dir, broken)
        data = bytearray((broken / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (broken / name).write_bytes(bytes(data))
        argv = ["perplexity", "--model", str(broken), "--data", str(shard_dir),
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert run_cli(argv) == 2
        err = capsys.readouterr().err
        assert f"{broken / name}: sha256" in err and err.count("\n") == 1
        assert not (tmp_path / "out").exists()


def test_evaluating_an_export_never_imports_the_trainer(model_dir: Path) -> None:
    code = (
        "import sys; from eval_stage import open_model; import eval_stage.cli; "
        f"open_model({str(model_dir)!r}); sys.exit(any(m.startswith('train_stage') "
        "for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
