"""The inference cache: one `Cache` type for every stack, pure or hybrid.

Layout: `layers[i]` is the state of layer i, whatever its mixer needs (`FastWeightState` for
TTT-Linear, `LactState` for LaCT, `KVState` for attention, `RingKVState` for sliding-window
attention, `EmptyState` for none; batch first in every tensor), `offsets`
(B,) int64 is how many tokens each row has consumed (RoPE positions continue from it),
`decode_mode` says how `model.decode` advances a TTT state. Every row owns its storage;
`split`/`stack` move rows between caches so many users can be served in one batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import ModelConfig
from .state import E2EState, EmptyState, FastWeightState, KVState, LactState, RingKVState

CACHE_FORMAT_VERSION = 2

# The state class of each mixer's layers (and of TTT-E2E's suffix layers, "e2e").
STATES: dict[str, Any] = {
    "e2e": E2EState,
    "ttt_linear": FastWeightState,
    "lact": LactState,
    "attention": KVState,
    "swa": RingKVState,
    "none": EmptyState,
}


@dataclass
class Cache:
    """Per-layer states, row offsets and decode mode of a batch of sequences (module docstring)."""

    layers: list[Any]
    offsets: Tensor
    decode_mode: str
    config: dict[str, Any]  # the ModelConfig (as a dict) of the model that made the cache

    @property
    def batch_size(self) -> int:
        return int(self.offsets.shape[0])

    def _map_rows(self, fn) -> Cache:
        return replace(self, layers=[s.map(fn) for s in self.layers], offsets=fn(self.offsets))

    def select(self, rows: Tensor | list[int]) -> Cache:
        """A new cache holding `rows` (indices; repeats allowed), each row's state copied."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.offsets.device)
        return self._map_rows(lambda t: t.index_select(0, index.to(t.device)))

    def reorder(self, index: Tensor | list[int]) -> Cache:
        """Beam search: row i of the result is row `index[i]` of this cache."""
        return self.select(index)

    def clone(self) -> Cache:
        return self._map_rows(torch.clone)

    def to(self, device: torch.device | str) -> Cache:
        return self._map_rows(lambda t: t.to(device))

    def split(self) -> list[Cache]:
        """One cache per row (each with its own storage)."""
        return [self.select([i]) for i in range(self.batch_size)]

    @classmethod
    def stack(cls, caches: list[Cache]) -> Cache:
        """Concatenate caches along the batch (rows may be at different positions)."""
        if not caches:
            raise ValueError("stack needs at least one cache")
        first = caches[0]
        for other in caches[1:]:
            same_model = other.config == first.config or not _identity_differences(
                first.config, other.config
            )
            if other.decode_mode != first.decode_mode or not same_model:
                raise ValueError("stack: caches come from different models or decode modes")
        layers = [
            type(states[0]).stack(states)
            for states in zip(*(c.layers for c in caches), strict=True)
        ]
        offsets = torch.cat([c.offsets for c in caches])
        return replace(first, layers=layers, offsets=offsets)

    def where_rows(self, active: Tensor, frozen: Cache) -> Cache:
        """Row i from this cache where `active[i]`, else from `frozen`, the cache this one was
        decoded from (rows that stopped generating keep the state they had). Consumes this
        cache: use the result in its place."""
        layers = [
            new.where_rows(active, old) for new, old in zip(self.layers, frozen.layers, strict=True)
        ]
        offsets = torch.where(active, self.offsets, frozen.offsets)
        return replace(self, layers=layers, offsets=offsets)

    def nbytes(self) -> int:
        """Bytes the cache's tensors hold allocated (a KV store's whole capacity)."""
        return sum(s.nbytes() for s in self.layers) + self.offsets.numel() * 8

    def save(self, path: str | Path) -> None:
        """One safetensors file: every tensor plus a JSON header (layer mixers, mode, config)."""
        from safetensors.torch import save_file

        tensors = {"offsets": self.offsets.contiguous()}
        storages = {self.offsets.untyped_storage().data_ptr()}
        for i, state in enumerate(self.layers):
            for name, t in state.tensors().items():
                t = t.contiguous()
                if t.untyped_storage().data_ptr() in storages:  # e.g. a fresh E2E state's
                    t = t.clone()  # start and ring: safetensors refuses shared storage
                storages.add(t.untyped_storage().data_ptr())
                tensors[f"layers.{i}.{name}"] = t
        header = {
            "format_version": CACHE_FORMAT_VERSION,
            "layer_mixers": [_mixer_of(s) for s in self.layers],
            "decode_mode": self.decode_mode,
            "config": self.config,
        }
        save_file(tensors, str(path), metadata={"header": json.dumps(header, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path, config: dict[str, Any], device: str = "cpu") -> Cache:
        """Load a saved cache for a model whose config (as a dict) is `config`; a cache made by
        another config is refused naming what differs."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=device) as f:
            header = json.loads(f.metadata()["header"])
            # Copied out of the file's buffer: its tensors sit at arbitrary byte offsets, and an
            # unaligned operand can take another kernel path (other rounding) than the aligned
            # memory of the cache that was saved, so decoding would not continue bit for bit.
            tensors = {name: f.get_tensor(name).clone() for name in f.keys()}  # noqa: SIM118
        if header.get("format_version") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"{path}: cache format {header.get('format_version')}; this version loads format "
                f"{CACHE_FORMAT_VERSION} (prefill again to rebuild it)"
            )
        differing = _identity_differences(config, header["config"])
        if differing:
            diffs = ", ".join(
                f"{k}: cache {cached!r} vs model {current!r}"
                for k, (current, cached) in differing.items()
            )
            raise ValueError(f"{path}: cache was made by a different model config ({diffs})")
        layers = [
            STATES[mixer].from_tensors(
                {k.split(".", 2)[2]: t for k, t in tensors.items() if k.startswith(f"layers.{i}.")}
            )
            for i, mixer in enumerate(header["layer_mixers"])
        ]
        return cls(
            layers=layers,
            offsets=tensors["offsets"],
            decode_mode=header["decode_mode"],
            config=config,
        )


def _identity_differences(config: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Where two dumped model configs differ in identity (`ModelConfig.IDENTITY_FIELDS`): only
    those change what a cached state means; operational fields (decode mode, checkpointing
    through time) do not."""
    return ModelConfig.model_validate(config).identity_differences(other)


def _mixer_of(state: Any) -> str:
    return next(mixer for mixer, state_type in STATES.items() if isinstance(state, state_type))


# The names of the per-mixer caches this type replaces; callers may keep using them.
TTTCache = Cache
KVCache = Cache
