"""`build_shards`: corpus → BOS/EOS-wrapped token streams per split → packed Arrow shards + manifest.

Two passes over the corpus: the first checks every file and hashes identities for the split
(so bad input fails before anything is written), the second encodes. Output files are written
under temp names and renamed at the end; the manifest is written last. A copy of the tokenizer
goes to `<out>/tokenizer/` so the directory decodes on its own.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_stage.config import ShardConfig
from data_stage.corpus import Corpus
from data_stage.encode import encode_chunks
from data_stage.errors import CorpusError, ShardError
from data_stage.manifest import (
    MANIFEST_FILE,
    Manifest,
    SplitInfo,
    TokenizerRef,
    manifest_bytes,
    read_manifest,
)
from data_stage.packing import RowPacker
from data_stage.readers import CorpusStats
from data_stage.shard_writer import SplitWriter, shard_layout
from data_stage.split import assign_splits, split_fraction
from data_stage.tokenizer import (
    INFO_FILE,
    MODEL_FILE,
    SentencePieceTokenizer,
    info_json,
    load_tokenizer,
)
from stage_common.faults import NoSpaceError, is_no_space, output_dir_problem
from ttt_core.files import fsync_and_replace, temp_path

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
_CHUNK_BYTES = 256 * 1024  # text per task sent to a worker


@dataclass
class _Done:
    """How far encoding got: text bytes read and tokens produced."""

    text_bytes: int = 0
    tokens: int = 0

    def needed_bytes(self, text_total: int) -> float:
        """Estimated bytes of all shards: 4-byte ids, tokens scaled to the whole corpus (before
        the first chunk, ~3 bytes of text per token)."""
        if self.text_bytes and self.tokens:
            return 4 * self.tokens * text_total / self.text_bytes
        return 4 * text_total / 3


def _chunks(
    corpus: Corpus, is_val: np.ndarray
) -> Iterator[tuple[list[str], tuple[list[bool], int]]]:
    """(texts, (is_val flags, UTF-8 bytes)) groups of about `_CHUNK_BYTES` of text."""
    texts: list[str] = []
    flags: list[bool] = []
    size = 0
    for index, doc in enumerate(corpus):
        if index >= len(is_val):
            raise CorpusError(
                "corpus changed while building (more documents than the first pass); rerun"
            )
        texts.append(doc.text)
        flags.append(bool(is_val[index]))
        size += len(doc.text.encode("utf-8"))
        if size >= _CHUNK_BYTES:
            yield texts, (flags, size)
            texts, flags, size = [], [], 0
    if texts:
        yield texts, (flags, size)


def _encode_splits(
    corpus: Corpus,
    is_val: np.ndarray,
    tokenizer: SentencePieceTokenizer,
    cfg: ShardConfig,
    writers: dict[str, SplitWriter],
    batch_rows: int,
    total_bytes: int,
    done: _Done,
) -> dict[str, SplitInfo]:
    """Encode every document, route it to its split's packer, return per-split counts.
    `done` counts text bytes and tokens so far (for an estimate when the disk fills)."""
    row_len = cfg.seq_len + 1
    packers = {s: RowPacker(row_len, batch_rows, writers[s].write) for s in SPLITS}
    documents = dict.fromkeys(SPLITS, 0)
    tokens = dict.fromkeys(SPLITS, 0)
    start = time.perf_counter()
    progress = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="tokenize",
        file=sys.stderr,
        mininterval=0.5,
    )
    with progress:
        chunks = _chunks(corpus, is_val)
        for (flags, size), flat, lengths in encode_chunks(
            chunks, tokenizer.model_bytes, cfg.workers
        ):
            for val, doc_tokens in zip(flags, np.split(flat, np.cumsum(lengths)[:-1]), strict=True):
                split = "val" if val else "train"
                packers[split].add(doc_tokens)
                documents[split] += 1
                tokens[split] += len(doc_tokens)
                done.tokens += len(doc_tokens)
            progress.update(size)
            done.text_bytes += size
            rate = (tokens["train"] + tokens["val"]) / max(time.perf_counter() - start, 1e-9)
            progress.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
    infos = {}
    for s in SPLITS:
        dropped = packers[s].finish()
        shards = writers[s].close()
        rows = sum(shard.rows for shard in shards)
        infos[s] = SplitInfo(
            documents=documents[s],
            tokens=tokens[s],
            rows=rows,
            dropped_tokens=dropped,
            shards=shards,
        )
    return infos


def _tokenizer_json(cfg: ShardConfig, tokenizer: SentencePieceTokenizer) -> bytes:
    if cfg.tokenizer.is_dir():
        return (cfg.tokenizer / INFO_FILE).read_bytes()
    return info_json(tokenizer.info())


def _old_shard_files(out: Path) -> set[str]:
    if not (out / MANIFEST_FILE).exists():
        return set()
    try:
        old = read_manifest(out)
    except ShardError:
        return set()
    return {shard.file for s in SPLITS for shard in old.split(s).shards}


def _commit(
    out: Path,
    writers: dict[str, SplitWriter],
    manifest: Manifest,
    tokenizer_files: tuple[bytes, bytes],
) -> None:
    """Replace a previous build in `out` with this one; the manifest is the commit point.

    Everything that takes space (tokenizer copy, manifest) is written under temp names before
    the previous build is touched, so a full disk fails while that build is still whole; what
    follows is renames only."""
    tok_dir = out / manifest.tokenizer.dir
    tok_dir.mkdir(parents=True, exist_ok=True)
    model_bytes, info_bytes = tokenizer_files
    staged = [
        (tok_dir / MODEL_FILE, model_bytes),
        (tok_dir / INFO_FILE, info_bytes),
        (out / MANIFEST_FILE, manifest_bytes(manifest)),
    ]
    try:
        for final, data in staged:
            temp_path(final).write_bytes(data)
        stale = _old_shard_files(out)
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        for final, _ in staged[:2]:
            fsync_and_replace(temp_path(final), final)
        for writer in writers.values():
            writer.commit()
        fsync_and_replace(temp_path(out / MANIFEST_FILE), out / MANIFEST_FILE)
    finally:
        for final, _ in staged:
            temp_path(final).unlink(missing_ok=True)
    current = {shard.file for s in SPLITS for shard in manifest.split(s).shards}
    for name in stale - current:
        (out / name).unlink(missing_ok=True)


def _scan(corpus: Corpus, val_fraction: float) -> tuple[np.ndarray, CorpusStats]:
    """First pass: read every document, return (is_val per document, corpus stats)."""
    fractions = np.fromiter((split_fraction(doc.identity) for doc in corpus), dtype=np.float64)
    return assign_splits(fractions, val_fraction), corpus.stats


def build_shards(cfg: ShardConfig) -> Manifest:
    """Build `cfg.out`: `train-NNNNN.arrow`, `val-NNNNN.arrow`, `tokenizer/`, `manifest.json`.

    Deterministic: same corpus, tokenizer and config (the worker count aside) → identical bytes.
    On error nothing new is left in `cfg.out` (temp files are removed, a new empty dir too).
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.tokenizer)
    problem = output_dir_problem(cfg.out)
    if problem:
        raise ShardError(f"{problem}; pass another --out")
    corpus = Corpus(cfg.corpus)
    is_val, scanned = _scan(corpus, cfg.val_fraction)
    row_len = cfg.seq_len + 1
    batch_rows, shard_rows = shard_layout(row_len, cfg.batch_bytes, cfg.max_shard_bytes)
    created = not cfg.out.exists()
    cfg.out.mkdir(parents=True, exist_ok=True)
    writers = {s: SplitWriter(cfg.out, s, row_len, shard_rows) for s in SPLITS}
    done = _Done()
    try:
        splits = _encode_splits(
            corpus, is_val, tokenizer, cfg, writers, batch_rows, scanned.bytes, done
        )
        if corpus.stats != scanned:
            raise CorpusError(
                "corpus changed while building (contents differ from the first pass); rerun"
            )
        if splits["train"].rows == 0:
            raise CorpusError(
                f"corpus too small: the train split has {splits['train'].tokens} tokens, one row needs "
                f"{row_len}; lower --seq-len or add text"
            )
        manifest = Manifest(
            seq_len=cfg.seq_len,
            row_len=row_len,
            batch_rows=batch_rows,
            val_fraction=cfg.val_fraction,
            tokenizer=TokenizerRef(
                hash=tokenizer.hash,
                vocab_size=tokenizer.vocab_size,
                bos_id=tokenizer.bos_id,
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
            ),
            corpus=scanned,
            train=splits["train"],
            val=splits["val"],
        )
        _commit(
            cfg.out, writers, manifest, (tokenizer.model_bytes, _tokenizer_json(cfg, tokenizer))
        )
    except BaseException as e:
        needed = done.needed_bytes(scanned.bytes) + 2 * len(tokenizer.model_bytes)
        for writer in writers.values():
            writer.discard()
        if created and not any(cfg.out.iterdir()):
            cfg.out.rmdir()
        if is_no_space(e):
            raise NoSpaceError(cfg.out, needed, "free space and rerun") from e
        raise
    if cfg.val_fraction > 0 and manifest.val.rows == 0:
        log.warning(
            "val split has 0 rows (%d tokens < %d per row); add text or raise --val-fraction",
            manifest.val.tokens,
            row_len,
        )
    elapsed = time.perf_counter() - started
    total = manifest.train.tokens + manifest.val.tokens
    print(
        f"data_stage shards: {total:,} tokens ({manifest.train.rows:,} train rows, "
        f"{manifest.val.rows:,} val rows) in {elapsed:.1f} s = {total / elapsed:,.0f} tokens/s",
        file=sys.stderr,
    )
    return manifest
