"""Packed documents: with `doc_starts`, every mixer treats each document of a row as its own
sequence, so a document's logits are its logits alone (fp64, 1e-9); without, context leaks
across the boundary (what the flag is for)."""

from __future__ import annotations

import pytest
import torch

from ttt_core import TTTLM, ModelConfig

from .helpers import STACKS

LENGTHS = [[11, 21], [5, 19, 8]]  # two rows of 32: documents of every size around chunk 8


def packed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 512, (2, 32), generator=gen)
    starts = torch.zeros(2, 32, dtype=torch.bool)
    for row, lengths in enumerate(LENGTHS):
        offsets = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        starts[row, offsets] = True
    return ids, starts


def documents(ids: torch.Tensor):
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for n in lengths:
            yield row, start, ids[row : row + 1, start : start + n]
            start += n


@pytest.mark.parametrize("stack", sorted(s for s in STACKS if not s.startswith("e2e")))
def test_each_packed_document_gets_its_logits_alone(stack):  # e2e refuses doc_starts (test_e2e)
    torch.manual_seed(0)
    model = TTTLM(ModelConfig.from_preset("debug_tiny", **STACKS[stack])).double().eval()
    ids, starts = packed_batch()
    with torch.no_grad():
        isolated = model(ids, doc_starts=starts).logits
        leaky = model(ids).logits
        for row, start, doc in documents(ids):
            alone = model(doc).logits[0]
            got = isolated[row, start : start + doc.shape[1]]
            torch.testing.assert_close(got, alone, rtol=1e-9, atol=1e-9)
    later = leaky[1, 5:24] - isolated[1, 5:24]  # row 1's second document
    if stack == "none":
        assert later.abs().max() < 1e-12  # nothing to leak without a mixer
    else:
        assert later.abs().max() > 1e-6, (
            "packed rows without doc_starts should see the earlier document"
        )


def test_document_isolation_trains_and_refuses_a_cache():
    model = TTTLM(ModelConfig.from_preset("debug_tiny", mixer="lact", lact_chunk_size=8))
    ids, starts = packed_batch()
    model(ids[:, :-1], labels=ids[:, 1:], doc_starts=starts[:, :-1]).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="without a cache"):
        model(ids, doc_starts=starts, use_cache=True)
