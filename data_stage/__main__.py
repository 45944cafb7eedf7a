"""`python -m data_stage {tokenizer,shards,inspect,verify}`: thin argparse front ends.

Each command builds the same pydantic config a flow passes to `train_tokenizer` /
`build_shards`. Bad input: one line on stderr, exit 2, nothing written; no space left (or another
environment failure): one line, exit 4, temps removed (`data_stage.faults`). `verify` exits 1
when a shard, the manifest or the tokenizer copy is inconsistent.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
from pydantic import ValidationError

from data_stage.config import CorpusConfig, ShardConfig, TokenizerConfig
from data_stage.dataset import ShardDataset, verify_shards
from data_stage.errors import DataStageError, validation_summary
from data_stage.faults import EXIT_BAD_INPUT, run_cli
from data_stage.manifest import Manifest
from data_stage.shards import build_shards
from data_stage.tokenizer import SentencePieceTokenizer, load_tokenizer
from data_stage.tokenizer_train import train_tokenizer

EXIT_CORRUPT = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """Config fields from the flags the user passed (others keep the config's defaults)."""
    return {
        field: getattr(args, dest)
        for dest, field in names.items()
        if getattr(args, dest) is not None
    }


_CORPUS_FLAGS = {
    "corpus": "paths",
    "corpus_format": "format",
    "text_field": "text_field",
    "max_bytes": "max_bytes",
    "doc_bytes": "doc_bytes",
}


def _add_corpus_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        nargs="+",
        metavar="GLOB",
        help="files, folders or globs (default: embedded stdlib corpus)",
    )
    p.add_argument("--corpus-format", choices=["auto", "text", "jsonl", "parquet", "stdlib"])
    p.add_argument(
        "--text-field", help="JSONL field / Parquet column holding the text (default: text)"
    )
    p.add_argument("--max-bytes", type=int, help="cap on the corpus's UTF-8 bytes")
    p.add_argument(
        "--doc-bytes",
        type=int,
        help="split text files larger than this at blank lines (default 65536)",
    )


def _corpus(args: argparse.Namespace) -> CorpusConfig:
    return CorpusConfig(**_given(args, _CORPUS_FLAGS))


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    flags = {
        "out": "out",
        "vocab_size": "vocab_size",
        "model_type": "model_type",
        "seed": "seed",
        "max_sentences": "max_sentences",
        "byte_fallback": "byte_fallback",
    }
    cfg = TokenizerConfig(corpus=_corpus(args), **_given(args, flags))
    info = train_tokenizer(cfg)
    print(f"tokenizer: {cfg.out}  vocab_size={info.vocab_size}  hash={info.hash}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    flags = {
        "tokenizer": "tokenizer",
        "seq_len": "seq_len",
        "out": "out",
        "val_fraction": "val_fraction",
        "workers": "workers",
        "max_shard_bytes": "max_shard_bytes",
        "batch_bytes": "batch_bytes",
    }
    cfg = ShardConfig(corpus=_corpus(args), **_given(args, flags))
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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m data_stage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    _add_corpus_flags(p)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    p.add_argument("--model-type", choices=["bpe", "unigram"])
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--max-sentences", type=int, help="lines sampled for training (default 2,000,000)"
    )
    p.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false", default=None)
    p.set_defaults(run=_cmd_tokenizer)

    p = sub.add_parser("shards", help="tokenize a corpus into packed Arrow shards")
    _add_corpus_flags(p)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory or .model")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="shard directory to write")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--workers", type=int, help="encoding processes (default: CPU count)")
    p.add_argument("--max-shard-bytes", type=int)
    p.add_argument("--batch-bytes", type=int)
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


def _describe(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return f"invalid config: {validation_summary(error)}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    return run_cli(
        f"data_stage {args.command}",
        lambda: run(args),
        (ValidationError, DataStageError),
        describe=_describe,
    )


if __name__ == "__main__":
    sys.exit(main())
