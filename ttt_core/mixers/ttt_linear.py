"""`TTTLinearMixer`: multi-head TTT-Linear (docs/ttt_linear.md). Prefill and training run the
dual form (`ttt_core.ops.ttt_linear`); decode runs online or chunked GD one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops import DualResult, dual_scan, ttt_linear_chunked_step, ttt_linear_online
from ..ops.ttt_linear.common import state_dtype
from ..rope import apply_rope_pair
from ..state import FastWeightState
from .common import MixerOutput, common_start, merge_heads, split_heads


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
        q, k, v = (split_heads(proj(x), H) for proj in (self.wq, self.wk, self.wv))
        in_chunk = positions % b
        q, k = apply_rope_pair(q, k, in_chunk, self.config.rope_theta)
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
        first_pos = common_start(positions) % self.config.chunk_size
        q, k, v, eta = self._project(x, positions)
        result = self._scan(q, k, v, eta, state, first_pos, with_inner_loss=return_stats)
        new_state = FastWeightState(
            W=result.W, anchor=None if state.anchor is None else result.anchor
        )
        stats = self._stats(result) if return_stats else None
        return MixerOutput(self.wo(merge_heads(result.z)), new_state, stats)

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
        return MixerOutput(self.wo(merge_heads(z)), FastWeightState(W=W, anchor=anchor), None)

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
