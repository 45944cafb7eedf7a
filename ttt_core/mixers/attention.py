"""`AttentionMixer`: causal softmax attention with RoPE, the Transformer baseline. Decoding
appends to a preallocated, doubling KV store (`ttt_core.state.KVState`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..rope import apply_rope_pair
from ..state import KVState
from .common import MixerOutput, merge_heads, split_heads


class AttentionMixer(nn.Module):
    """Causal softmax attention with RoPE at absolute positions: the Transformer baseline."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D = config.d_model
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))

    def init_state(self, batch: int, *, cold: bool = False, chunked: bool = False) -> KVState:
        """An empty KV cache. Decoding is exact in either decode mode and there is no learned
        state, so `chunked` and `cold` change nothing (a model without TTT layers refuses cold)."""
        return KVState.empty(batch, self.config.n_heads, self.config.head_dim, self.wq.weight)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: KVState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        """Attend causally over the state's tokens and the new ones; the new keys/values are
        written into the state's store (returned state; None without a state)."""
        H, theta = self.config.n_heads, self.config.rope_theta
        q, k, v = (split_heads(proj(x), H) for proj in (self.wq, self.wk, self.wv))
        q, k = apply_rope_pair(q, k, positions, theta)
        T = x.shape[1]
        if state is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return MixerOutput(self.wo(merge_heads(out)), None, None)
        state = state.append(k, v)
        keys, values = state.k.to(q.dtype), state.v.to(q.dtype)  # (B, H, S, d)
        if state.extent == T and not state.ragged:  # nothing before: plain causal attention
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            mask = state.query_mask(T)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return MixerOutput(self.wo(merge_heads(out)), state, None)

    def decode(self, x: Tensor, positions: Tensor, state: KVState) -> MixerOutput:
        """Decoding with a KV cache is prefill with a cache; the same code path."""
        return self.forward(x, positions, state)
