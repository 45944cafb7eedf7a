"""Corpora and configs shared by the data_stage tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

from data_stage import CorpusConfig, ShardConfig

# Real text no one on the team wrote: the first ~120 KB of the embedded stdlib corpus.
SMALL_STDLIB = CorpusConfig(max_bytes=120_000)

UNICODE_LINES = [
    "Grüße aus Köln, naïve café — déjà vu.",
    "Ελληνικά: καλημέρα κόσμε.",
    "日本語のテキストと中文文本。",
    "emoji 🙂🚀 and math ∑ x² ≤ ∞",
    "\tindented\twith tabs   and   spaces  ",
]


def write_docs(folder: Path, count: int, prefix: str = "doc") -> list[Path]:
    """`count` small distinct text files with paragraphs and some non-ASCII text."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        lines = [f"Document {i} of {count}: {UNICODE_LINES[i % len(UNICODE_LINES)]}"]
        lines += [f"def f_{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(i % 7 + 3)]
        path = folder / f"{prefix}{i:03d}.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


def shard_config(corpus_dir: Path, tokenizer: Path, out: Path, **overrides) -> ShardConfig:
    """A config that yields several shards of several record batches from `corpus_dir`."""
    fields = {
        "corpus": CorpusConfig(paths=[str(corpus_dir)]),
        "tokenizer": tokenizer,
        "seq_len": 31,
        "out": out,
        "val_fraction": 0.1,
        "workers": 1,
        "max_shard_bytes": 40 * 128,
        "batch_bytes": 12 * 128,
    }
    fields.update(overrides)
    return ShardConfig(**fields)
