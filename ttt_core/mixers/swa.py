"""`SlidingWindowMixer`: causal attention over the last `window_size` tokens (position t sees
t - window_size + 1 .. t), with the parameters of `AttentionMixer` (same names and shapes).
Its cache is a ring of `window_size` slots (`ttt_core.state.RingKVState`): flat in context.
`sliding_window_attention` is also LaCT's in-chunk branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rope import apply_rope_pair
from ..state import RingKVState
from .attention import AttentionMixer
from .common import MixerOutput, merge_heads, split_heads


def window_mask(query_pos: Tensor, key_pos: Tensor, window: int) -> Tensor:
    """True where a query at query_pos (..., Tq) may attend a key at key_pos (..., Tk): the key
    is filled (pos >= 0), not in the future, and less than `window` behind. (..., Tq, Tk)."""
    q, k = query_pos[..., :, None], key_pos[..., None, :]
    return (k >= 0) & (k <= q) & (k > q - window)


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int, ring: RingKVState | None
) -> tuple[Tensor, RingKVState | None]:
    """Attention of q, k, v (B, H, T, d) at positions (B, T) over the window, the ring's tokens
    included; returns the output (B, H, T, d) and the ring with the new tokens (None without one).

    Without a ring and T <= window this is plain causal attention (so it equals
    `AttentionMixer`). Otherwise queries go in blocks of `window`, each attending to its own
    block and the one before (the ring stands before the first): O(T * window), not O(T^2).
    """
    B, H, T, d = q.shape
    if ring is None and window >= T:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out, None
    before = ring if ring is not None else RingKVState.empty(B, H, window, d, like=k)
    if window >= T:
        keys = torch.cat([before.k.to(k.dtype), k], dim=2)
        values = torch.cat([before.v.to(v.dtype), v], dim=2)
        mask = window_mask(positions, torch.cat([before.pos, positions], dim=1), window)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
    else:
        out = _blocked(q, k, v, positions, window, before)
    return out, None if ring is None else ring.write(k, v, positions)


def _blocked(
    q: Tensor, k: Tensor, v: Tensor, positions: Tensor, window: int, before: RingKVState
) -> Tensor:
    """Block j of `window` queries attends to keys of blocks j - 1 and j (block -1: the ring)."""
    B, H, T, d = q.shape
    n_blocks = -(-T // window)
    pad = n_blocks * window - T
    # padding continues the positions: real queries never see it (it lies in their future)
    extra = positions[:, -1:] + torch.arange(1, pad + 1, device=positions.device)
    pos = torch.cat([positions, extra], dim=1)
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    keys = torch.cat([before.k.to(k.dtype), k], dim=2).unfold(2, 2 * window, window)
    values = torch.cat([before.v.to(v.dtype), v], dim=2).unfold(2, 2 * window, window)
    key_pos = torch.cat([before.pos, pos], dim=1).unfold(1, 2 * window, window)  # (B, n, 2w)
    mask = window_mask(pos.view(B, n_blocks, window), key_pos, window)  # (B, n, w, 2w)
    out = F.scaled_dot_product_attention(
        q.view(B, H, n_blocks, window, d),
        keys.transpose(-1, -2),
        values.transpose(-1, -2),
        attn_mask=mask[:, None],
    )
    return out.reshape(B, H, n_blocks * window, d)[:, :, :T]


class SlidingWindowMixer(AttentionMixer):
    """Causal attention over the last `window_size` tokens, RoPE at absolute positions: the
    attention mixer's parameters (inherited), another mask and a ring for a cache."""

    def init_state(self, batch: int, *, cold: bool = False, chunked: bool = False) -> RingKVState:
        """An empty ring; `cold` and `chunked` change nothing (no learned state, exact decode)."""
        cfg = self.config
        return RingKVState.empty(
            batch, cfg.n_heads, cfg.window_size, cfg.head_dim, like=self.wq.weight
        )

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: RingKVState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        H, theta = self.config.n_heads, self.config.rope_theta
        q, k, v = (split_heads(proj(x), H) for proj in (self.wq, self.wk, self.wv))
        q, k = apply_rope_pair(q, k, positions, theta)
        out, ring = sliding_window_attention(q, k, v, positions, self.config.window_size, state)
        return MixerOutput(self.wo(merge_heads(out)), ring, None)

    def decode(self, x: Tensor, positions: Tensor, state: RingKVState) -> MixerOutput:
        """Decoding is prefill with a ring; the same code path."""
        return self.forward(x, positions, state)
