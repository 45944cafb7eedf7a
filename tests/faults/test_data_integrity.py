"""Shard directories edited or damaged after they were built: `verify` checks the actual rows
and ids against the manifest and the tokenizer (not the manifest's own word), training and every
eval that reads shards refuse them with one line, and `--no-verify-data` opts out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_stage.__main__ import main as data_main
from data_stage.shard_writer import shard_schema
from eval_stage.cli import main as eval_main
from train_stage.cli import main as train_main
from ttt_core.files import sha256_file

from .helpers import TRAIN, failure_line, flip_byte, run_main, tree_bytes


@pytest.fixture
def data(shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _rewrite_shard(directory: Path, split: str, change) -> Path:
    """Rewrite the split's first shard with `change(ids)` applied and make the manifest's size
    and sha256 agree: only the content checks can catch it."""
    manifest = json.loads((directory / "manifest.json").read_text())
    info = manifest[split]["shards"][0]
    path = directory / info["file"]
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    row_len = manifest["row_len"]
    batches = [reader.get_batch(i).column(0).flatten().to_numpy().reshape(-1, row_len)
               for i in range(reader.num_record_batches)]  # fmt: skip
    ids = change(np.concatenate(batches).copy())
    schema = shard_schema(ids.shape[1])
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(ids.reshape(-1), type=pa.int32()), ids.shape[1]
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([column], schema=schema))
    info.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def _out_of_vocab(ids: np.ndarray) -> np.ndarray:
    ids[0, 3] = 512  # the tokenizer has ids 0..511
    return ids


def _short_rows(ids: np.ndarray) -> np.ndarray:
    return ids[:, :17]


def _flip_low_byte(path: Path) -> None:
    """Flip the low byte of an id in the middle of the data: still an id below 512."""
    flip_byte(path, path.stat().st_size // 2 // 4 * 4)


CASES = {
    "seq_len edited": (lambda d: _edit_manifest(d, lambda m: m.update(seq_len=64)),
                       "row_len 33 is not seq_len 64 + 1"),
    "seq_len and row_len edited": (
        lambda d: _edit_manifest(d, lambda m: m.update(seq_len=64, row_len=65)),
        "rows of 33 ids"),
    "vocab_size edited": (
        lambda d: _edit_manifest(d, lambda m: m["tokenizer"].update(vocab_size=1024)),
        "tokenizer fields"),
    "rows edited": (lambda d: _edit_manifest(d, lambda m: m["val"].update(rows=m["val"]["rows"] + 5)),
                    "counts disagree"),
    "ids out of the vocabulary": (lambda d: _rewrite_shard(d, "val", _out_of_vocab),
                                  "outside the tokenizer's vocabulary [0, 512)"),
    "shorter rows": (lambda d: _rewrite_shard(d, "val", _short_rows), "rows of 17 ids"),
    "flipped shard byte": (lambda d: _flip_low_byte(next(d.glob("val-*.arrow"))), "sha256 mismatch"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_verify_catches_it_one_line_per_problem(data, capsys, case):
    damage, message = CASES[case]
    damage(data)
    code, _, err = run_main(data_main, ["verify", str(data)], capsys)
    assert code == 1 and "Traceback" not in err
    assert message in err, err
    # verify reports every problem it finds, one line each, each naming its file
    assert all(line.startswith(str(data)) for line in err.strip().splitlines()), err


@pytest.mark.parametrize("case", ["seq_len edited", "ids out of the vocabulary"])
def test_training_refuses_it(data, tmp_path, capsys, case):
    damage, message = CASES[case]
    damage(data)
    run_dir = tmp_path / "run"
    argv = [*TRAIN, "--data", str(data), "--run-dir", str(run_dir)]
    code, _, err = run_main(train_main, argv, capsys)
    assert code == 2
    assert message in failure_line(err, "train_stage: refused: data directory fails verification")
    assert not run_dir.exists()


@pytest.mark.parametrize("case", ["ids out of the vocabulary", "flipped shard byte"])
def test_eval_refuses_it_unless_told_not_to_verify(data, trained_run, tmp_path, capsys, case):
    damage, message = CASES[case]
    damage(data)
    model = tmp_path / "run"
    shutil.copytree(trained_run, model)
    before = tree_bytes(model)
    for command in ("perplexity", "position-loss", "niah"):
        out = tmp_path / command
        argv = [command, "--model", str(model), "--data", str(data), "--out", str(out)]
        code, _, err = run_main(eval_main, argv, capsys)
        assert code == 2, err
        line = failure_line(err, f"eval_stage {command}: error: validation data fails verification")
        assert message in line and "--no-verify-data" in line
        assert not out.exists()
    assert tree_bytes(model) == before
    # The opt-out reads the shards as they are: ids still in the vocabulary evaluate, others
    # end in one line rather than an IndexError deep in the model.
    argv = ["perplexity", "--model", str(model), "--data", str(data),
            "--out", str(tmp_path / "unverified"), "--no-verify-data"]  # fmt: skip
    code, _, err = run_main(eval_main, argv, capsys)
    if case == "flipped shard byte":
        assert code == 0, err
    else:
        assert code == 2
        assert "hold ids outside [0, 512)" in failure_line(err, "eval_stage perplexity: error:")
