"""CLI: the happy path, refusals (exit 2, one line, nothing written), verify's exit 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_stage_testing import write_docs

from data_stage import load_tokenizer, read_manifest
from data_stage.__main__ import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusals
        code = int(e.code)
    out, err = capsys.readouterr()
    return code, out, err


def test_tokenizer_then_shards_then_inspect_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    write_docs(docs, 30)
    tok, shards = tmp_path / "tok", tmp_path / "shards"
    code, out, _ = run(
        ["tokenizer", "--corpus", f"{docs}/*.txt", "--vocab-size", "400", "--out", str(tok)], capsys
    )
    assert code == 0 and load_tokenizer(tok).hash[:12] in out
    code, out, err = run(
        [
            "shards",
            "--corpus",
            str(docs),
            "--tokenizer",
            str(tok),
            "--seq-len",
            "16",
            "--out",
            str(shards),
            "--val-fraction",
            "0.1",
            "--workers",
            "1",
        ],
        capsys,
    )
    assert code == 0 and "tokens/s" in err and "train:" in out
    assert read_manifest(shards).seq_len == 16
    code, out, _ = run(["inspect", str(shards), "--index", "0"], capsys)
    assert code == 0 and "seq_len=16" in out and "<s>Document" in out
    code, out, _ = run(["verify", str(shards)], capsys)
    assert code == 0 and "ok" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokenizer", "--out", "{tmp}/t"], "the following arguments are required: --vocab-size"),
        (["tokenizer", "--vocab-size", "0", "--out", "{tmp}/t"], "invalid config: vocab_size"),
        (
            [
                "tokenizer",
                "--vocab-size",
                "300",
                "--out",
                "{tmp}/t",
                "--corpus",
                "{tmp}/missing/*.txt",
            ],
            "matched no files",
        ),
        (
            [
                "tokenizer",
                "--vocab-size",
                "300",
                "--out",
                "{tmp}/t",
                "--corpus-format",
                "stdlib",
                "--corpus",
                "x",
            ],
            "takes no paths",
        ),
        (
            ["shards", "--tokenizer", "{tmp}/none", "--seq-len", "8", "--out", "{tmp}/t"],
            "no such tokenizer",
        ),
        (
            ["shards", "--tokenizer", "{tmp}", "--seq-len", "-1", "--out", "{tmp}/t"],
            "invalid config: seq_len",
        ),
        (
            [
                "shards",
                "--tokenizer",
                "{tmp}",
                "--seq-len",
                "8",
                "--out",
                "{tmp}/t",
                "--val-fraction",
                "2",
            ],
            "invalid config: val_fraction",
        ),
        (["verify", "{tmp}/t"], "manifest.json: cannot read"),
        (["inspect", "{tmp}/t"], "manifest.json: cannot read"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t").exists()


def test_shards_with_an_empty_corpus_file_exits_2_and_writes_nothing(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    write_docs(docs, 3)
    (docs / "blank.txt").write_text("")
    code, _, err = run(
        [
            "shards",
            "--corpus",
            str(docs),
            "--tokenizer",
            str(tokenizer_dir),
            "--seq-len",
            "8",
            "--out",
            str(tmp_path / "t"),
        ],
        capsys,
    )
    assert code == 2 and "blank.txt: empty file" in err
    assert not (tmp_path / "t").exists()


def test_verify_exits_1_naming_the_corrupt_shard(
    tmp_path: Path, shard_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    path = copy / "val-00000.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    code, _, err = run(["verify", str(copy)], capsys)
    assert code == 1 and "val-00000.arrow: sha256 mismatch" in err


def test_module_entry_point_refuses_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "data_stage", "shards", "--seq-len", "8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "required" in proc.stderr
