"""`LactMixer`: LaCT (docs/lact.md), large-chunk SwiGLU fast weights next to sliding-window
attention in one layer. Prefill and training run the chunk loop (`ttt_core.ops.lact`, backend
per `ops_backend`); decode applies the fast weights token by token and updates them from a
partial-chunk buffer when a chunk completes, so it reproduces prefill."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..norms import RMSNorm
from ..ops.lact import chunk_step, lact_scan, swiglu_apply
from ..precision import upcast, wide_dtype
from ..rope import apply_rope, apply_rope_pair
from ..state import LactState, RingKVState
from .common import MixerOutput, common_start, merge_heads, split_heads
from .swa import sliding_window_attention

L2_EPS = 1e-5  # added to the norm of the fast q and k


def _l2_normalise(x: Tensor) -> Tensor:
    wide = upcast(x)
    return (wide / (wide.norm(dim=-1, keepdim=True) + L2_EPS)).to(x.dtype)


def _rope_per_attention_head(x: Tensor, positions: Tensor, n_heads: int, theta: float) -> Tensor:
    """RoPE on fast-weight heads (B, Hf, T, d), rotating within each attention head of size
    D / n_heads (as the reference does), at absolute positions."""
    rotated = apply_rope(split_heads(merge_heads(x), n_heads), positions, theta)
    return split_heads(merge_heads(rotated), x.shape[1])


def _inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0, without overflow: y + log(1 - exp(-y))."""
    return y + math.log(-math.expm1(-y))


def _last_tokens(seq: Tensor, n: int, capacity: int) -> Tensor:
    """A (B, Hf, capacity, ...) buffer holding the last n tokens of seq (B, Hf, T, ...) in its
    first slots, zeros after them."""
    buffer = seq.new_zeros(*seq.shape[:2], capacity, *seq.shape[3:])
    if n:
        buffer[:, :, :n] = seq[:, :, seq.shape[2] - n :]
    return buffer


class LactMixer(nn.Module):
    """Shared q, k, v projections feed a sliding-window attention branch (n_heads heads) and a
    fast-weight branch (lact_heads heads of d = D / lact_heads); their sum goes through wo."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D, Hf, r = config.d_model, config.lact_heads, config.lact_low_rank
        d = D // Hf
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.qk_scale = nn.Parameter(torch.ones(D, 2))  # column 0 for q, 1 for k
        self.qk_offset = nn.Parameter(torch.zeros(D, 2))
        self.lr_proj = nn.Linear(D, 3 * Hf)  # per head: the lr of W0, W1, W2
        if r > 0:  # W0, W2 = left @ right + 0.5 I
            self.W0_left, self.W2_left = (nn.Parameter(torch.empty(Hf, d, r)) for _ in range(2))
            self.W0_right, self.W2_right = (nn.Parameter(torch.empty(Hf, r, d)) for _ in range(2))
        else:
            self.W0, self.W2 = (nn.Parameter(torch.empty(Hf, d, d)) for _ in range(2))
        self.W1 = nn.Parameter(torch.empty(Hf, d, d))
        self.ttt_norm = RMSNorm(d, config.norm_eps)
        self.ttt_scale_proj = nn.Linear(D, Hf)
        self.momentum_proj = nn.Linear(D, Hf) if config.lact_momentum else None

    def reset_parameters(self) -> None:
        """The LaCT init of what is not a plain weight matrix (those are the model's normal
        init): biases 0, q/k scale 1 and offset 0, low-rank factors N(0, (0.5 / sqrt(fan))^2)
        or full W0, W2 ~ N(0, 1/d), W1 ~ N(0, 1/d)."""
        d, r, gain = self.config.d_model // self.config.lact_heads, self.config.lact_low_rank, 0.5
        for linear in (self.lr_proj, self.ttt_scale_proj, self.momentum_proj):
            if linear is not None:
                nn.init.zeros_(linear.bias)
        nn.init.ones_(self.qk_scale)
        nn.init.zeros_(self.qk_offset)
        if r > 0:
            for left, right in ((self.W0_left, self.W0_right), (self.W2_left, self.W2_right)):
                nn.init.normal_(left, std=gain / math.sqrt(r))
                nn.init.normal_(right, std=gain / math.sqrt(d))
        else:
            nn.init.normal_(self.W0, std=1 / math.sqrt(d))
            nn.init.normal_(self.W2, std=1 / math.sqrt(d))
        nn.init.normal_(self.W1, std=1 / math.sqrt(d))

    def slow_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The learned initial fast weights (Hf, d, d) each, in the state dtype."""
        if self.config.lact_low_rank > 0:
            eye = 0.5 * torch.eye(self.W1.shape[-1], dtype=self.W1.dtype, device=self.W1.device)
            W0, W2 = self.W0_left @ self.W0_right + eye, self.W2_left @ self.W2_right + eye
        else:
            W0, W2 = self.W0, self.W2
        return tuple(upcast(w) for w in (W0, self.W1, W2))

    def init_state(self, batch: int, *, cold: bool = False, chunked: bool = False) -> LactState:
        """Fresh per-row state: the slow weights cloned per row, zero momentum, empty buffers.
        Decode is exact in either mode (`chunked` changes nothing); a cold start is refused."""
        if cold:
            raise ValueError(
                "init='zeros' is a TTT-Linear ablation; LaCT starts from its W0, W1, W2"
            )
        cfg = self.config
        Hf, C = cfg.lact_heads, cfg.lact_chunk_size
        with torch.no_grad():
            W = [w.unsqueeze(0).expand(batch, -1, -1, -1).clone() for w in self.slow_weights()]
        d = W[0].shape[-1]
        ring = RingKVState.empty(batch, cfg.n_heads, cfg.window_size, cfg.head_dim, self.wq.weight)
        zeros = W[0].new_zeros
        shapes = {"k": (C, d), "v": (C, d), "lr": (C, 3), "gate": (C,)}
        buffers = {name: zeros(batch, Hf, *shape) for name, shape in shapes.items()}
        momentum = None
        if cfg.lact_momentum:
            momentum = tuple(torch.zeros_like(w) for w in W)
        else:
            buffers["gate"] = None
        return LactState.build(W, momentum, buffers, ring)

    def _project(self, x: Tensor, positions: Tensor):
        """Attention q, k, v (B, H, T, dh); fast q, k, v (B, Hf, T, d) in the state dtype; lr
        (B, Hf, T, 3) and momentum gate (B, Hf, T) or None, in the state dtype."""
        cfg = self.config
        H, Hf, theta = cfg.n_heads, cfg.lact_heads, cfg.rope_theta
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        qa, ka, va = (split_heads(t, H) for t in (q, k, v))
        qa, ka = apply_rope_pair(qa, ka, positions, theta)
        fast_q = F.silu(q * self.qk_scale[:, 0] + self.qk_offset[:, 0])
        fast_k = F.silu(k * self.qk_scale[:, 1] + self.qk_offset[:, 1])
        fast_q, fast_k = (_l2_normalise(split_heads(t, Hf)) for t in (fast_q, fast_k))
        fast_q, fast_k = (
            _rope_per_attention_head(t, positions, H, theta) for t in (fast_q, fast_k)
        )
        fast_v = split_heads(F.silu(v), Hf)
        wide = wide_dtype(x.dtype)
        base = _inverse_softplus(cfg.lact_base_lr)
        lr = F.softplus(self.lr_proj(x).to(wide) + base)  # (B, T, 3 Hf)
        lr = lr.view(*x.shape[:2], Hf, 3).transpose(1, 2)
        gate = None
        if self.momentum_proj is not None:
            gate = torch.sigmoid(self.momentum_proj(x).to(wide)).transpose(1, 2)
        fast = tuple(t.to(wide) for t in (fast_q, fast_k, fast_v))
        return (qa, ka, va), fast, lr, gate

    def _output(self, attn: Tensor, o: Tensor, x: Tensor) -> Tensor:
        """wo(attention + per-head RMSNorm(o) * silu(ttt_scale_proj(x)))."""
        scale = F.silu(self.ttt_scale_proj(x)).transpose(1, 2)[..., None]  # (B, Hf, T, 1)
        ttt = self.ttt_norm(o.to(x.dtype)) * scale
        return self.wo(merge_heads(attn) + merge_heads(ttt))

    def _norms(self, weights) -> tuple[Tensor, Tensor, Tensor]:
        """Target row norms (1, Hf, d, 1): those of the slow weights."""
        return tuple(w.norm(dim=-1, keepdim=True).unsqueeze(0) for w in weights)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: LactState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        """Training / prefill. With a state every row must be at the same position: the state's
        partial chunk is completed first by the new tokens."""
        cfg = self.config
        C = cfg.lact_chunk_size
        (qa, ka, va), (fq, fk, fv), lr, gate = self._project(x, positions)
        attn, ring = sliding_window_attention(
            qa, ka, va, positions, cfg.window_size, None if state is None else state.ring
        )
        slow = self.slow_weights()
        norms = self._norms(slow)
        B = x.shape[0]
        if state is None:
            weights = tuple(w.unsqueeze(0).expand(B, -1, -1, -1) for w in slow)
            result = lact_scan(
                fq, fk, fv, lr, gate, weights, norms, chunk_size=C, muon=cfg.lact_muon,
                need_state=False, backend=cfg.ops_backend,
            )  # fmt: skip
            return MixerOutput(self._output(attn, result.o, x), None, None)
        held = common_start(positions) % C  # tokens of the state's partial chunk
        fq = torch.cat([fq.new_zeros(*fq.shape[:2], held, fq.shape[-1]), fq], dim=2)
        fk, fv, lr = (
            torch.cat([buf[:, :, :held], t], dim=2)
            for buf, t in ((state.buf_k, fk), (state.buf_v, fv), (state.buf_lr, lr))
        )
        if gate is not None:
            gate = torch.cat([state.buf_gate[:, :, :held], gate], dim=2)
        result = lact_scan(
            fq, fk, fv, lr, gate, state.weights, norms, state.momentum, chunk_size=C,
            muon=cfg.lact_muon, need_state=True, backend=cfg.ops_backend,
        )  # fmt: skip
        tail = fk.shape[2] % C  # the tokens of the new partial chunk
        buffers = {}
        for name, seq in (("k", fk), ("v", fv), ("lr", lr), ("gate", gate)):
            buffers[name] = None if seq is None else _last_tokens(seq, tail, C)
        new_state = LactState.build(result.weights, result.momentum, buffers, ring)
        return MixerOutput(self._output(attn, result.o[:, :, held:], x), new_state, None)

    def decode(self, x: Tensor, positions: Tensor, state: LactState) -> MixerOutput:
        """Token by token, rows at any positions: each token reads the current fast weights and
        is written to its row's partial-chunk buffer; a row whose chunk completes updates (the
        update prefill runs) and clears its buffer."""
        cfg = self.config
        C = cfg.lact_chunk_size
        (qa, ka, va), (fq, fk, fv), lr, gate = self._project(x, positions)
        norms = self._norms(self.slow_weights())
        rows = torch.arange(x.shape[0], device=x.device)
        # Owned copies, written in place below (the caller's state is never touched); a completed
        # chunk replaces them with fresh tensors (zeros, or `where_rows`), owned as well.
        buffers = {n: None if b is None else b.clone() for n, b in state.buffers.items()}
        state = LactState.build(state.weights, state.momentum, buffers, state.ring)
        token = {"k": fk, "v": fv, "lr": lr, "gate": gate}
        attn_out, ttt_out = [], []
        for t in range(x.shape[1]):
            one = slice(t, t + 1)
            out, ring = sliding_window_attention(
                qa[:, :, one], ka[:, :, one], va[:, :, one], positions[:, one], cfg.window_size,
                state.ring,
            )  # fmt: skip
            attn_out.append(out)
            ttt_out.append(swiglu_apply(state.weights, fq[:, :, one]))
            slot = positions[:, t] % C
            for name, held in state.buffers.items():
                if held is not None:
                    held[rows, :, slot] = token[name][:, :, t]
            state = LactState.build(state.weights, state.momentum, state.buffers, ring)
            done = slot == C - 1
            if bool(done.any()):
                b = state.buffers
                weights, momentum = chunk_step(
                    state.weights, state.momentum, b["k"], b["v"], b["lr"], b["gate"], norms,
                    cfg.lact_muon,
                )  # fmt: skip
                cleared = {n: None if t is None else torch.zeros_like(t) for n, t in b.items()}
                stepped = LactState.build(weights, momentum, cleared, ring)
                state = stepped.where_rows(done, state)
        attn, o = torch.cat(attn_out, dim=2), torch.cat(ttt_out, dim=2)
        return MixerOutput(self._output(attn, o, x), state, None)
