"""Exceptions raised by data_stage; each message names the file and what to do."""

__all__ = [
    "CorpusError",
    "DataStageError",
    "ShardError",
    "TokenizerError",
]


class DataStageError(ValueError):
    """Base class: bad input to a data_stage step (CLIs exit 2 on it)."""


class CorpusError(DataStageError):
    """A corpus file is missing, empty, unreadable or malformed."""


class TokenizerError(DataStageError):
    """A tokenizer cannot be trained or loaded, or its files disagree."""


class ShardError(DataStageError):
    """A shard directory is missing, incomplete, corrupt or built for another tokenizer."""
