"""Sliding-window attention: the blocked prefill against a dense masked reference, equality with
attention when the window covers the sequence, fp64 decode through the ring, flat cache size."""

from __future__ import annotations

import pytest
import torch

from ttt_core import TTTLM, ModelConfig
from ttt_core.mixers.swa import sliding_window_attention


def dense_window_attention(q, k, v, window: int):
    """softmax(q k^T / sqrt(d)) over keys t - window < s <= t, as one masked matrix."""
    T, d = q.shape[2], q.shape[-1]
    t = torch.arange(T)
    allowed = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)
    scores = (q @ k.mT) / d**0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize(("T", "window"), [(37, 8), (32, 8), (8, 8), (5, 8), (40, 1)])
def test_blocked_prefill_equals_the_dense_masked_reference(T, window):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    positions = torch.arange(T).expand(2, T)
    out, ring = sliding_window_attention(q, k, v, positions, window, None)
    assert ring is None
    torch.testing.assert_close(out, dense_window_attention(q, k, v, window), rtol=1e-12, atol=1e-12)


def models(window: int, seed: int = 0) -> tuple[TTTLM, TTTLM]:
    """An attention model and a swa model with the same weights (the same state dict)."""
    torch.manual_seed(seed)
    attention = TTTLM(ModelConfig.from_preset("debug_tiny", mixer="attention")).double().eval()
    swa = TTTLM(ModelConfig.from_preset("debug_tiny", mixer="swa", window_size=window))
    swa.load_state_dict(attention.state_dict())  # strict: the same names and shapes
    return attention, swa.double().eval()


def test_a_window_covering_the_sequence_is_attention():
    attention, swa = models(window=64)
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(swa(ids).logits, attention(ids).logits)
        cut = models(window=8)[1](ids).logits  # a short window does change the result
    assert (cut - attention(ids).logits).abs().max() > 1e-3


def test_fp64_decode_through_the_ring_equals_prefill_and_the_cache_stays_one_size():
    _, swa = models(window=8)
    ids = torch.randint(0, 512, (2, 29), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        prefill = swa(ids).logits
        cache = swa.new_cache(2)
        sizes, logits = set(), []
        for t in range(ids.shape[1]):
            out = swa.decode(ids[:, t : t + 1], cache)
            cache = out.cache
            logits.append(out.logits)
            sizes.add(cache.nbytes())
    torch.testing.assert_close(torch.cat(logits, 1), prefill, rtol=1e-9, atol=1e-9)
    assert len(sizes) == 1
    assert cache.layers[0].k.shape == (2, 4, 8, 16)  # (B, H, window, d)
