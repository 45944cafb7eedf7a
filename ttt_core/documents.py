"""Packed documents as separate sequences: `Documents` regroups the tokens of rows that pack
several documents so that each document is its own row, starting at position 0.

A mixer run on the regrouped rows cannot carry anything across a document boundary (attention
sees no key of another document, fast weights start from their learned initial values at every
document, chunks align to the document's start): each document's output equals its output alone.
The blocks' MLPs and norms act per token, so only the mixers need the regrouping.

Cost: the regrouped batch is (documents, longest document), padded after each document's end
(causal mixers never let the padding reach a real token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Documents:
    """Where each token of a (B, T) batch lives in the (N, L) batch of its documents."""

    doc: Tensor  # (B * T,) int64, the document of each token
    offset: Tensor  # (B * T,) int64, its position in that document
    rows: tuple[int, int]  # (B, T)
    count: int  # N
    longest: int  # L

    @staticmethod
    def from_starts(starts: Tensor) -> Documents:
        """starts (B, T) bool: True at the first token of each document (a row's first token
        always starts one: a row never continues the row before it)."""
        if starts.dim() != 2 or starts.dtype != torch.bool:
            raise ValueError(
                f"doc_starts must be a (B, T) bool tensor, got {tuple(starts.shape)} {starts.dtype}"
            )
        B, T = starts.shape
        starts = starts.clone()
        starts[:, 0] = True
        flat = starts.flatten()
        doc = flat.long().cumsum(0) - 1
        first = flat.nonzero().squeeze(1)  # (N,) flat index of each document's first token
        offset = torch.arange(B * T, device=starts.device) - first[doc]
        longest = int(torch.bincount(doc).max())
        return Documents(doc, offset, (B, T), int(first.numel()), longest)

    @property
    def positions(self) -> Tensor:
        """(N, L) positions within each document: 0, 1, ..."""
        return torch.arange(self.longest, device=self.doc.device).expand(self.count, -1)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, L, ...), zeros after each document's end."""
        out = x.new_zeros(self.count, self.longest, *x.shape[2:])
        out[self.doc, self.offset] = x.flatten(0, 1)
        return out

    def unpack(self, y: Tensor) -> Tensor:
        """(N, L, ...) -> (B, T, ...), the inverse of `pack` on the tokens it placed."""
        return y[self.doc, self.offset].view(*self.rows, *y.shape[2:])
