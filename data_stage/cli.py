"""`python -m data_stage {tokenizer,shards,inspect,verify}`: thin front ends over the stage.

`tokenizer` and `shards` take every field of the pydantic config a flow passes to
`train_tokenizer` / `build_shards` as a flag (`stage_common.config_cli`: `--config FILE.yaml`, then
the flags given; `--corpus.format` etc., with the older `--corpus`, `--corpus-format`,
`--text-field`, `--max-bytes`, `--doc-bytes` kept); `command` renders a config as the command
that rebuilds it. Bad input: one line on stderr, exit 2, nothing written; no space left (or another
environment failure): one line, exit 4, temps removed (`stage_common.faults`). `verify` exits 1
when a shard, the manifest or the tokenizer copy is inconsistent.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

import numpy as np
from pydantic import BaseModel, ValidationError

from data_stage.config import CorpusFormat, ShardConfig, TokenizerConfig
from data_stage.dataset import ShardDataset, verify_shards
from data_stage.errors import DataStageError
from data_stage.manifest import Manifest
from data_stage.shards import build_shards
from data_stage.tokenizer import SentencePieceTokenizer, load_tokenizer
from data_stage.tokenizer_train import train_tokenizer
from stage_common.config_cli import (
    Alias,
    CliParser,
    ConfigFileError,
    ConfigFlags,
    StageCommand,
    describe_refusal,
    parse_stage_command,
    subcommand_flags,
)
from stage_common.faults import run_cli

EXIT_CORRUPT = 1


CORPUS_ALIASES = (
    Alias("--corpus", "corpus.paths", {"nargs": "+", "metavar": "GLOB"}),
    Alias("--corpus-format", "corpus.format", {"choices": get_args(CorpusFormat)}),
    Alias("--text-field", "corpus.text_field"),
    Alias("--max-bytes", "corpus.max_bytes", {"type": int}),
    Alias("--doc-bytes", "corpus.doc_bytes", {"type": int}),
)
SUBCOMMANDS: dict[type[BaseModel], str] = {TokenizerConfig: "tokenizer", ShardConfig: "shards"}


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    cfg = args.config_flags.config(args)
    info = train_tokenizer(cfg)
    print(f"tokenizer: {cfg.out}  vocab_size={info.vocab_size}  hash={info.hash}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    cfg = args.config_flags.config(args)
    manifest = build_shards(cfg)
    print(_summary(cfg.out, manifest))
    return 0


def _summary(directory: Path, m: Manifest) -> str:
    lines = [
        f"shards: {directory}  seq_len={m.seq_len}  vocab_size={m.tokenizer.vocab_size}  "
        f"tokenizer={m.tokenizer.hash[:12]}",
        f"corpus: {m.corpus.documents:,} documents, {m.corpus.bytes:,} bytes, "
        f"{m.corpus.invalid_utf8_documents} with invalid UTF-8",
    ]
    for name in ("train", "val"):
        s = m.split(name)
        lines.append(
            f"{name:>5}: {s.documents:,} documents, {s.tokens:,} tokens, {s.rows:,} rows in "
            f"{len(s.shards)} shards, {s.dropped_tokens:,} tail tokens dropped"
        )
    return "\n".join(lines)


def render(tokenizer: SentencePieceTokenizer, ids: np.ndarray) -> str:
    """Decode ids, showing BOS/EOS as <s> / </s> so document boundaries are visible."""
    marks = {tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>"}
    out, start = [], 0
    for i, token in enumerate(ids.tolist()):
        if token in marks:
            out += [tokenizer.decode(ids[start:i]), marks[token]]
            start = i + 1
    out.append(tokenizer.decode(ids[start:]))
    return "".join(out)


def _cmd_inspect(args: argparse.Namespace) -> int:
    ds = ShardDataset(args.dir, args.split)
    print(_summary(args.dir, ds.manifest))
    if not len(ds):
        print(f"{args.split} split is empty")
        return 0
    if not 0 <= args.index < len(ds):
        raise DataStageError(
            f"--index {args.index} outside [0, {len(ds)}) for the {args.split} split"
        )
    row = ds[args.index]
    tokenizer = load_tokenizer(args.dir / ds.manifest.tokenizer.dir)
    print(f"\n{args.split}[{args.index}] ids[:32]: {row[:32].tolist()}")
    print(f"{args.split}[{args.index}] decoded:\n{render(tokenizer, row)}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    problems = verify_shards(args.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_CORRUPT
    print(f"{args.dir}: ok (every shard and the tokenizer copy match manifest.json)")
    return 0


def build_parser() -> CliParser:
    parser = CliParser(prog="python -m data_stage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    ConfigFlags(p, TokenizerConfig, aliases=CORPUS_ALIASES)
    p.set_defaults(run=_cmd_tokenizer)

    p = sub.add_parser("shards", help="tokenize a corpus into packed Arrow shards")
    ConfigFlags(p, ShardConfig, aliases=CORPUS_ALIASES)
    p.set_defaults(run=_cmd_shards)

    p = sub.add_parser("inspect", help="summarize a shard directory and decode one row")
    p.add_argument("dir", type=Path)
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--index", type=int, default=0)
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("verify", help="check every shard's sha256 (exit 1 on a bad shard)")
    p.add_argument("dir", type=Path)
    p.set_defaults(run=_cmd_verify)
    return parser


def command(cfg: TokenizerConfig | ShardConfig) -> list[str]:
    """`python -m data_stage tokenizer|shards FLAGS...`: the command that rebuilds `cfg`."""
    name = SUBCOMMANDS[type(cfg)]
    flags = subcommand_flags(build_parser(), name)
    return ["python", "-m", "data_stage", name, *flags.command(cfg)]


def parse_command(argv: Sequence[str]) -> StageCommand:
    """The config (and other flags) a `data_stage tokenizer|shards` command line (with or without
    its leading `python -m data_stage`) stands for, without running it."""
    return parse_stage_command(build_parser(), argv, "data_stage")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    return run_cli(
        f"data_stage {args.command}",
        lambda: run(args),
        (ValidationError, DataStageError, ConfigFileError),
        describe=describe_refusal,
    )


if __name__ == "__main__":
    sys.exit(main())
