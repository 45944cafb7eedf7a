"""data_stage: text in, token shards out.

Corpus readers (text, JSONL, Parquet, the embedded stdlib corpus), a SentencePiece tokenizer
behind the `Tokenizer` protocol, packed Arrow IPC shards with a manifest, a memory-mapped
reader and the resumable rank-partitioned `SampleOrder`; `TokenizerOutputs` / `ShardOutputs`
say what a step wrote and whether it is whole. Imports no torch.
"""

from data_stage.cli import command, parse_command
from data_stage.config import CorpusConfig, ShardConfig, TokenizerConfig
from data_stage.corpus import Corpus, stdlib_root
from data_stage.dataset import ShardDataset, verify_shards
from data_stage.errors import CorpusError, DataStageError, ShardError, TokenizerError
from data_stage.manifest import Manifest, read_manifest
from data_stage.order import SampleOrder
from data_stage.outputs import ShardOutputs, TokenizerOutputs
from data_stage.readers import CorpusStats, Document
from data_stage.shards import build_shards
from data_stage.split import assign_splits, split_fraction
from data_stage.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerInfo,
    copy_tokenizer,
    load_tokenizer,
)
from data_stage.tokenizer_train import train_tokenizer

__all__ = [
    "Corpus",
    "CorpusConfig",
    "CorpusError",
    "CorpusStats",
    "DataStageError",
    "Document",
    "Manifest",
    "SampleOrder",
    "SentencePieceTokenizer",
    "ShardConfig",
    "ShardDataset",
    "ShardError",
    "ShardOutputs",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerError",
    "TokenizerInfo",
    "TokenizerOutputs",
    "assign_splits",
    "build_shards",
    "command",
    "copy_tokenizer",
    "load_tokenizer",
    "parse_command",
    "read_manifest",
    "split_fraction",
    "stdlib_root",
    "train_tokenizer",
    "verify_shards",
]
