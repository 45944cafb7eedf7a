"""One notion of identity: every config field is classified, and identity follows only the
fields that change the weights."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from ttt_core import ModelConfig, TTTCache
from ttt_core.identity import IdentityConfig

from .test_inference import random_ids, tiny_model


def test_every_model_field_is_identity_or_operational():
    """A field added later must be put in IDENTITY_FIELDS or OPERATIONAL_FIELDS, with a reason."""
    assert ModelConfig.classification_errors() == []


def test_an_unclassified_field_is_named():
    class Sloppy(IdentityConfig):
        IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset({"a", "gone"})
        OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset({"a"})
        a: int = 0
        b: int = 0

    assert Sloppy.classification_errors() == [
        "Sloppy: b in neither IDENTITY_FIELDS nor OPERATIONAL_FIELDS",
        "Sloppy: a in both IDENTITY_FIELDS and OPERATIONAL_FIELDS",
        "Sloppy: gone named in a set but not a field",
    ]


def test_model_identity_ignores_operational_fields_and_follows_the_others():
    base = ModelConfig.from_preset("debug_tiny")
    same = base.model_copy(update={"checkpoint_n_chunks": 3, "decode_mode": "chunked"})
    assert same.identity() == base.identity()
    assert base.identity_differences(same.model_dump()) == {}
    other = base.model_copy(update={"eta_base": 0.1, "chunk_size": 4})
    assert base.identity_differences(other) == {
        "chunk_size": (8, 4),
        "eta_base": (0.01, 0.1),
    }


def test_a_cache_loads_into_a_model_that_differs_only_operationally(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        cache = model(random_ids(1, 5), use_cache=True).cache
    cache.save(tmp_path / "c.safetensors")
    operational = model.config.model_copy(update={"checkpoint_n_chunks": 2})
    loaded = TTTCache.load(tmp_path / "c.safetensors", operational.model_dump())
    assert torch.equal(loaded.layers[0].W, cache.layers[0].W)
    other = model.config.model_copy(update={"rope_theta": 500.0}).model_dump()
    with pytest.raises(ValueError, match=r"rope_theta: cache 10000.0 vs model 500.0"):
        TTTCache.load(tmp_path / "c.safetensors", other)
    stacked = TTTCache.stack(
        [cache, TTTCache.load(tmp_path / "c.safetensors", operational.model_dump())]
    )
    assert stacked.batch_size == 2
