"""Benchmark data_stage on the embedded corpus: tokenizer training, shard build, random reads.

    python scripts/bench_data.py --out bench_results/bench_data.json

Reports tokenizer training seconds, shard build tokens/s (all workers), and single-process
random-access throughput of the memory-mapped reader at seq_len 2048: `get_many` with random
indices (copies rows into a new array) and `ds[i]` (zero-copy views). Reads are from the page
cache (the shards were just written), which is the steady state of a training run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_stage import (
    CorpusConfig,
    ShardConfig,
    ShardDataset,
    TokenizerConfig,
    build_shards,
    train_tokenizer,
)


def bench_tokenizer(work: Path, vocab_size: int, corpus: CorpusConfig) -> tuple[Path, dict]:
    out = work / "tokenizer"
    start = time.perf_counter()
    info = train_tokenizer(TokenizerConfig(corpus=corpus, out=out, vocab_size=vocab_size))
    seconds = time.perf_counter() - start
    assert info.training is not None
    return out, {
        "seconds": seconds,
        "vocab_size": info.vocab_size,
        "sentences": info.training.sentences,
        "corpus_documents": info.training.corpus.documents,
        "corpus_bytes": info.training.corpus.bytes,
    }


def bench_build(
    work: Path, tokenizer: Path, seq_len: int, workers: int, corpus: CorpusConfig
) -> tuple[Path, dict]:
    out = work / "shards"
    cfg = ShardConfig(corpus=corpus, tokenizer=tokenizer, seq_len=seq_len, out=out, workers=workers)
    start = time.perf_counter()
    manifest = build_shards(cfg)
    seconds = time.perf_counter() - start
    tokens = manifest.train.tokens + manifest.val.tokens
    return out, {
        "seconds": seconds,
        "workers": workers,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "train_rows": manifest.train.rows,
        "val_rows": manifest.val.rows,
        "train_shards": len(manifest.train.shards),
    }


def bench_reads(shards: Path, batch: int, seconds: float, seed: int) -> dict:
    ds = ShardDataset(shards, "train")
    rng = np.random.default_rng(seed)
    ds.get_many(np.arange(len(ds)))  # map every batch once, as a warm training run would have
    results = {"rows": len(ds), "row_len": ds.row_len}

    samples, checksum = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows = ds.get_many(rng.integers(0, len(ds), size=batch))
        checksum += int(rows[:, 0].sum())
        samples += batch
    elapsed = time.perf_counter() - start
    results["get_many"] = {
        "batch": batch,
        "samples_per_s": samples / elapsed,
        "tokens_per_s": samples * ds.row_len / elapsed,
    }

    views = 0
    indices = rng.integers(0, len(ds), size=100_000).tolist()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in indices:
            row = ds[i]
        views += len(indices)
    elapsed = time.perf_counter() - start
    checksum += int(row[0])
    results["getitem_view"] = {
        "samples_per_s": views / elapsed,
        "tokens_per_s": views * ds.row_len / elapsed,
    }
    results["checksum"] = checksum  # keeps the reads from being optimized into nothing
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench_data.json"))
    parser.add_argument(
        "--work-dir", type=Path, help="keep tokenizer and shards here (default: temp dir)"
    )
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=64, help="rows per get_many call")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="duration of each read benchmark"
    )
    args = parser.parse_args()

    corpus = CorpusConfig()  # the embedded stdlib corpus
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        tokenizer, tok_result = bench_tokenizer(work, args.vocab_size, corpus)
        shards, build_result = bench_build(work, tokenizer, args.seq_len, args.workers, corpus)
        read_result = bench_reads(shards, args.batch, args.seconds, seed=0)

    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seq_len": args.seq_len,
        "tokenizer_training": tok_result,
        "shard_build": build_result,
        "reader": read_result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"tokenizer training: {tok_result['seconds']:.1f} s (vocab {tok_result['vocab_size']}, "
        f"{tok_result['corpus_bytes']:,} bytes, {tok_result['sentences']:,} lines)\n"
        f"shard build:        {build_result['tokens_per_s']:,.0f} tokens/s "
        f"({build_result['tokens']:,} tokens, {build_result['workers']} workers, "
        f"{build_result['seconds']:.1f} s)\n"
        f"get_many (B={args.batch}):   {read_result['get_many']['samples_per_s']:,.0f} samples/s = "
        f"{read_result['get_many']['tokens_per_s'] / 1e6:,.0f}M tokens/s\n"
        f"ds[i] views:        {read_result['getitem_view']['samples_per_s']:,.0f} samples/s = "
        f"{read_result['getitem_view']['tokens_per_s'] / 1e6:,.0f}M tokens/s\n"
        f"written to {args.out}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
