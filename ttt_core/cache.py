"""Inference caches: `TTTCache` (fast weights) and `KVCache` (attention), one interface.

Layout: `layers[i]` is the state of layer i (batch first in every tensor), `offsets` (B,) int64
is how many tokens each row has consumed (RoPE positions continue from it), `decode_mode` says
how `model.decode` advances a TTT state. Every row owns its storage; `split`/`stack` move rows
between caches so many users can be served in one batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from .config import ModelConfig
from .state import FastWeightState, KVState

CACHE_FORMAT_VERSION = 1


@dataclass
class _Cache:
    layers: list[Any]
    offsets: Tensor
    decode_mode: str
    config: dict[str, Any]  # the ModelConfig (as a dict) of the model that made the cache
    kind: ClassVar[str]

    @property
    def batch_size(self) -> int:
        return int(self.offsets.shape[0])

    def _map_rows(self, fn) -> _Cache:
        return replace(self, layers=[s.map(fn) for s in self.layers], offsets=fn(self.offsets))

    def select(self, rows: Tensor | list[int]) -> _Cache:
        """A new cache holding `rows` (indices; repeats allowed), each row's state copied."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.offsets.device)
        return self._map_rows(lambda t: t.index_select(0, index.to(t.device)))

    def reorder(self, index: Tensor | list[int]) -> _Cache:
        """Beam search: row i of the result is row `index[i]` of this cache."""
        return self.select(index)

    def clone(self) -> _Cache:
        return self._map_rows(torch.clone)

    def to(self, device: torch.device | str) -> _Cache:
        return self._map_rows(lambda t: t.to(device))

    def split(self) -> list[_Cache]:
        """One cache per row (each with its own storage)."""
        return [self.select([i]) for i in range(self.batch_size)]

    @classmethod
    def stack(cls, caches: list[_Cache]) -> _Cache:
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
        layers = [cls._stack_layer([c.layers[i] for c in caches]) for i in range(len(first.layers))]
        offsets = torch.cat([c.offsets for c in caches])
        return replace(first, layers=layers, offsets=offsets)

    def where_rows(self, active: Tensor, frozen: _Cache) -> _Cache:
        """Row i from this cache where `active[i]`, else from `frozen` (rows that stopped
        generating keep the state they had)."""
        layers = [
            self._where_layer(active, new, old)
            for new, old in zip(self.layers, frozen.layers, strict=True)
        ]
        offsets = torch.where(active, self.offsets, frozen.offsets)
        return replace(self, layers=layers, offsets=offsets)

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (the memory generation keeps per batch)."""
        return sum(t.numel() * t.element_size() for s in self.layers for t in s.tensors().values())

    def save(self, path: str | Path) -> None:
        """One safetensors file: every tensor plus a JSON header (kind, mode, config)."""
        from safetensors.torch import save_file

        tensors = {"offsets": self.offsets.contiguous()}
        for i, state in enumerate(self.layers):
            for name, t in state.tensors().items():
                tensors[f"layers.{i}.{name}"] = t.contiguous()
        header = {
            "format_version": CACHE_FORMAT_VERSION,
            "kind": self.kind,
            "decode_mode": self.decode_mode,
            "n_layers": len(self.layers),
            "config": self.config,
        }
        save_file(tensors, str(path), metadata={"header": json.dumps(header, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path, config: dict[str, Any], device: str = "cpu") -> _Cache:
        """Load a saved cache for a model whose config (as a dict) is `config`; a cache made by
        another config, or of the other kind, is refused naming what differs."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=device) as f:
            header = json.loads(f.metadata()["header"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if header["format_version"] != CACHE_FORMAT_VERSION or header["kind"] != cls.kind:
            raise ValueError(
                f"{path}: holds a {header['kind']} cache (format {header['format_version']}); "
                f"{cls.__name__} loads {cls.kind} caches (format {CACHE_FORMAT_VERSION})"
            )
        differing = _identity_differences(config, header["config"])
        if differing:
            diffs = ", ".join(
                f"{k}: cache {cached!r} vs model {current!r}"
                for k, (current, cached) in differing.items()
            )
            raise ValueError(f"{path}: cache was made by a different model config ({diffs})")
        layers = [
            cls._layer_from(
                {k.split(".", 2)[2]: t for k, t in tensors.items() if k.startswith(f"layers.{i}.")}
            )
            for i in range(header["n_layers"])
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


@dataclass
class TTTCache(_Cache):
    """Per layer a `FastWeightState` (W, and in chunked decode the chunk anchor)."""

    kind: ClassVar[str] = "ttt_linear"

    @staticmethod
    def _stack_layer(states: list[FastWeightState]) -> FastWeightState:
        anchors = [s.anchor for s in states]
        return FastWeightState(
            W=torch.cat([s.W for s in states]),
            anchor=None if anchors[0] is None else torch.cat(anchors),
        )

    @staticmethod
    def _where_layer(active: Tensor, new: FastWeightState, old: FastWeightState) -> FastWeightState:
        rows = active[:, None, None, None]
        return FastWeightState(
            W=torch.where(rows, new.W, old.W),
            anchor=None if new.anchor is None else torch.where(rows, new.anchor, old.anchor),
        )

    @staticmethod
    def _layer_from(tensors: dict[str, Tensor]) -> FastWeightState:
        return FastWeightState(**tensors)


@dataclass
class KVCache(_Cache):
    """Per layer a `KVState`; rows of different lengths are right-padded with valid = False."""

    kind: ClassVar[str] = "attention"

    @staticmethod
    def _stack_layer(states: list[KVState]) -> KVState:
        length = max(s.length for s in states)
        padded = [s.padded_to(length) for s in states]
        return KVState(
            k=torch.cat([s.k for s in padded]),
            v=torch.cat([s.v for s in padded]),
            valid=torch.cat([s.valid for s in padded]),
        )

    @staticmethod
    def _where_layer(active: Tensor, new: KVState, old: KVState) -> KVState:
        old = old.padded_to(new.length)
        rows = active[:, None, None, None]
        return KVState(
            k=torch.where(rows, new.k, old.k),
            v=torch.where(rows, new.v, old.v),
            valid=torch.where(active[:, None], new.valid, old.valid),
        )

    @staticmethod
    def _layer_from(tensors: dict[str, Tensor]) -> KVState:
        return KVState(**tensors)


CACHES: dict[str, type[_Cache]] = {"ttt_linear": TTTCache, "attention": KVCache}
