"""`TTTStateCache`: the project's inference cache (`ttt_core.cache`) as a transformers `Cache`.

transformers' cache layers hold growing key/value tensors; a TTT layer holds a fixed-size fast
weight. So this cache keeps no transformers layers: it carries one project cache (`state`: per
layer state, `offsets`, `decode_mode`) and implements the batch surgery generation needs
(`reorder_cache` for beam search, `batch_repeat_interleave` for `num_return_sequences`,
`batch_select_indices`) with the project cache's `select`. The model replaces `state` as it
consumes tokens, as transformers' caches update in place.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Cache


class TTTStateCache(Cache):
    """`state`: a `TTTCache` / `KVCache` (or None before the first forward). Every row must be
    at the same position: transformers generation has no per-row offsets (no left padding)."""

    def __init__(self, state=None):
        super().__init__(layers=[])
        self.state = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self.state!r})"

    def __len__(self) -> int:
        return 0 if self.state is None else len(self.state.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (the same for every row)."""
        if self.state is None:
            return 0
        offsets = self.state.offsets
        if bool((offsets != offsets[0]).any()):
            raise ValueError(
                f"TTTStateCache: rows are at different positions {offsets.tolist()}; "
                "transformers generation needs one position for the whole batch"
            )
        return int(offsets[0])

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no maximum: TTT state is fixed-size and the KV state grows

    @property
    def batch_size(self) -> int:
        return -1 if self.state is None else self.state.batch_size

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False  # a fast weight cannot be rolled back to an earlier token

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def is_linear(self) -> list[bool]:
        # Not "linear attention" in transformers' sense: the cache knows its length, so generate
        # may trim the tokens it already holds from a continued `input_ids`.
        return [False] * max(len(self), 1)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search: row i becomes row `beam_idx[i]`."""
        self.state = self._require_state("reorder_cache").reorder(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.state = self._require_state("batch_select_indices").select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row repeated `repeats` times in place (rows r, r, ..., r+1, ...)."""
        state = self._require_state("batch_repeat_interleave")
        rows = torch.arange(state.batch_size).repeat_interleave(repeats)
        self.state = state.select(rows)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                "TTTStateCache.crop: TTT state cannot be rolled back to an earlier token"
            )

    def reset(self) -> None:
        self.state = None

    def _require_state(self, operation: str):
        if self.state is None:
            raise ValueError(f"TTTStateCache.{operation}: the cache is empty (no forward yet)")
        return self.state
