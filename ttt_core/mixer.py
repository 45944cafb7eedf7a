"""Sequence mixers with one interface: `TTTLinearMixer`, the `AttentionMixer` baseline and
`NoMixer`, the no-context control.

All take the normed block input x (B, T, D) and absolute token positions (B, T), and return a
`MixerOutput`. `forward` is prefill/training (the TTT dual form); `decode` consumes tokens one
at a time from a state (online or chunked GD for TTT; a KV cache for attention; nothing for
`NoMixer`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .ops import DualResult, dual_scan, ttt_linear_chunked_step, ttt_linear_online
from .ops.common import state_dtype
from .rope import apply_rope
from .state import EmptyState, FastWeightState, KVState


class MixerOutput(NamedTuple):
    y: Tensor  # (B, T, D)
    state: FastWeightState | KVState | EmptyState | None  # None: attention without a state
    stats: dict[str, Tensor] | None  # TTT only, when asked for


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)  # (B, H, T, d)


def _merge_heads(x: Tensor) -> Tensor:
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


class TTTLinearMixer(nn.Module):
    """Multi-head TTT-Linear: the hidden state is a per-head fast weight W trained at test time."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D, H, d = config.d_model, config.n_heads, config.head_dim
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.eta_gate = nn.Linear(D, H if config.eta_per_head else 1, bias=False)
        self.W0 = nn.Parameter(torch.empty(H, d, d))
        self.ln_weight = nn.Parameter(torch.ones(H, d))
        self.ln_bias = nn.Parameter(torch.zeros(H, d))

    def init_state(
        self, batch: int, *, cold: bool = False, chunked: bool = False
    ) -> FastWeightState:
        """A fresh state per row: the learned W0 tiled and cloned (or zeros when `cold`, an
        ablation). Rows never share storage. `chunked` adds the chunk anchor for chunked decode."""
        W0 = torch.zeros_like(self.W0) if cold else self.W0
        W = W0.to(state_dtype(W0)).unsqueeze(0).expand(batch, -1, -1, -1).clone()
        return FastWeightState(W=W, anchor=W.clone() if chunked else None)

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v (B, H, T, d) with RoPE at `position mod b`, and eta (B, H, T)."""
        H, b = self.config.n_heads, self.config.chunk_size
        q, k, v = (_split_heads(proj(x), H) for proj in (self.wq, self.wk, self.wv))
        in_chunk = positions % b
        q = apply_rope(q, in_chunk, self.config.rope_theta)
        k = apply_rope(k, in_chunk, self.config.rope_theta)
        gate = self.eta_gate(x)
        eta = self.config.eta_base * torch.sigmoid(gate.to(state_dtype(gate)))  # (B, T, H or 1)
        return q, k, v, eta.transpose(1, 2).expand(-1, H, -1)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: FastWeightState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        """Prefill / training with the dual form. Every row must be at the same position."""
        if state is None:
            state = self.init_state(x.shape[0])
        first_pos = _common_start(positions) % self.config.chunk_size
        q, k, v, eta = self._project(x, positions)
        result = self._scan(q, k, v, eta, state, first_pos, with_inner_loss=return_stats)
        new_state = FastWeightState(
            W=result.W, anchor=None if state.anchor is None else result.anchor
        )
        stats = self._stats(result) if return_stats else None
        return MixerOutput(self.wo(_merge_heads(result.z)), new_state, stats)

    def decode(self, x: Tensor, positions: Tensor, state: FastWeightState) -> MixerOutput:
        """Token-by-token decode: online GD (state without anchor) or chunked GD (with anchor)."""
        if self.training:
            raise RuntimeError(
                "TTT decode (online/primal path) runs only in eval mode: call model.eval() first; "
                "training uses the dual form through forward()"
            )
        q, k, v, eta = self._project(x, positions)
        W, anchor = state.W, state.anchor
        params = (self.ln_weight, self.ln_bias)
        outputs = []
        for t in range(x.shape[1]):
            one = slice(t, t + 1)
            args = (q[:, :, one], k[:, :, one], v[:, :, one], eta[:, :, one])
            if anchor is None:
                z, W = ttt_linear_online(*args, W, *params, eps=self.config.ln_eps)
            else:
                z, W = ttt_linear_chunked_step(
                    *args,
                    W,
                    anchor,
                    *params,
                    chunk_size=self.config.chunk_size,
                    eps=self.config.ln_eps,
                )
                chunk_done = (positions[:, t] + 1) % self.config.chunk_size == 0
                anchor = torch.where(chunk_done[:, None, None, None], W, anchor)
            outputs.append(z)
        z = torch.cat(outputs, dim=2)
        return MixerOutput(self.wo(_merge_heads(z)), FastWeightState(W=W, anchor=anchor), None)

    def _scan(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        state: FastWeightState,
        first_pos: int,
        with_inner_loss: bool,
    ) -> DualResult:
        """The dual form over the sequence; when training, backward keeps the state of every
        `checkpoint_n_chunks`-th chunk only (checkpointing through time, see `dual_scan`)."""
        cfg = self.config
        return dual_scan(
            q, k, v, eta, state.W, self.ln_weight, self.ln_bias,
            chunk_size=cfg.chunk_size, eps=cfg.ln_eps, first_pos=first_pos, anchor=state.anchor,
            with_inner_loss=with_inner_loss, backend=cfg.ops_backend,
            checkpoint_chunks=cfg.checkpoint_n_chunks if self.training else 0,
        )  # fmt: skip

    @staticmethod
    @torch.no_grad()
    def _stats(result: DualResult) -> dict[str, Tensor]:
        """Fast-weight statistics and mean inner loss per (row, head, token), all detached."""
        W = result.W.detach().float()
        before, after, n = result.inner_loss
        return {
            "W_mean": W.mean(),
            "W_std": W.std(),
            "W_absmax": W.abs().max(),
            "inner_loss_anchor": before / n,
            "inner_loss_updated": after / n,
        }


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
        q, k, v = (_split_heads(proj(x), H) for proj in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, positions, theta), apply_rope(k, positions, theta)
        T = x.shape[1]
        if state is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return MixerOutput(self.wo(_merge_heads(out)), None, None)
        state = state.append(k, v)
        keys, values = state.k.to(q.dtype), state.v.to(q.dtype)  # (B, H, S, d)
        if state.extent == T and not state.ragged:  # nothing before: plain causal attention
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            mask = state.query_mask(T)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return MixerOutput(self.wo(_merge_heads(out)), state, None)

    def decode(self, x: Tensor, positions: Tensor, state: KVState) -> MixerOutput:
        """Decoding with a KV cache is prefill with a cache; the same code path."""
        return self.forward(x, positions, state)


class NoMixer(nn.Module):
    """The no-context control: the mixer sublayer adds nothing, so each position's output
    depends on its own token only. No parameters (the block drops the norm in front too)."""

    def __init__(self, config: ModelConfig):
        super().__init__()

    def init_state(self, batch: int, *, cold: bool = False, chunked: bool = False) -> EmptyState:
        return EmptyState()

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: EmptyState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        return MixerOutput(torch.zeros_like(x), EmptyState(), None)

    def decode(self, x: Tensor, positions: Tensor, state: EmptyState) -> MixerOutput:
        return self.forward(x, positions, state)


def _common_start(positions: Tensor) -> int:
    """The position every row starts at; prefill of rows at different positions is refused."""
    start = positions[:, 0]
    if bool((start != start[0]).any()):
        raise ValueError(
            "prefill needs every row at the same position; rows are at "
            f"{start.tolist()}: prefill them separately and stack their caches"
        )
    return int(start[0])


MIXERS: dict[str, type[nn.Module]] = {
    "ttt_linear": TTTLinearMixer,
    "attention": AttentionMixer,
    "none": NoMixer,
}
