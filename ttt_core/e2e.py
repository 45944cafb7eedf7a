"""TTT-E2E (docs/ttt_e2e.md): the last `e2e_suffix_layers` blocks of a sliding-window stack
carry a prime SwiGLU MLP whose weights are trained on the context itself at test time.

A suffix block is h <- h + SWA(norm(h)); h <- h + MLP'(norm(h)); h <- h + MLP(norm(h)). The
suffix runs chunk by chunk (C = `e2e_chunk_size`): chunk i's outputs use the current prime
weights W_i; once the first token of chunk i + 1 is known (the label of chunk i's last
position), one SGD step on chunk i's mean next-token loss w.r.t. W_i only, its gradient clipped
to `e2e_inner_clip` in global norm per sequence, gives W_{i+1}. Outputs are strictly causal.

Training differentiates through every step (second order) and rematerialises each chunk in
backward, so memory holds one chunk's graph plus per-chunk carries. Evaluation, prefill and
decode take the same steps with first-order gradients, also under `torch.no_grad`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .mixers.swa import SlidingWindowMixer
from .norms import RMSNorm
from .precision import upcast
from .state import E2EState, RingKVState
from .swiglu import SwiGLU

Prime = tuple[Tensor, Tensor, Tensor]  # per row: gate (B, P, D), up (B, P, D), down (B, D, P)
Head = Callable[[Tensor], Tensor]  # final hidden (B, T, D) -> logits (B, T, V)


def prime_apply(w: Prime, x: Tensor) -> Tensor:
    """The prime SwiGLU of each row with that row's weights: x (B, T, D) -> (B, T, D)."""
    gate, up, down = w
    return torch.bmm(F.silu(torch.bmm(x, gate.mT)) * torch.bmm(x, up.mT), down.mT)


def clipped_sgd(prime: list[Prime], loss: Tensor, lr: float, clip: float, create_graph: bool):
    """One SGD step of every row's prime weights on `loss` (the sum of per-row losses, so each
    row gets its own gradient), the gradient scaled by clip / max(norm, clip) with the norm
    global over the row's suffix layers."""
    flat = [w for p in prime for w in p]
    grads = torch.autograd.grad(loss, flat, create_graph=create_graph)
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # (B,)
    scale = clip / sq.clamp_min(1e-30).sqrt().clamp_min(clip)
    new = [
        w - (lr * scale).to(w.dtype).view(-1, 1, 1) * g for w, g in zip(flat, grads, strict=True)
    ]
    return [tuple(new[i : i + 3]) for i in range(0, len(new), 3)]


class SuffixBlock(nn.Module):
    """A sliding-window block with a prime MLP between its mixer and its MLP. The prime
    weights come in per row (`forward`); the module's own (`prime`) are their learned start."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.d_model
        self.mixer_norm = RMSNorm(D, config.norm_eps)
        self.mixer = SlidingWindowMixer(config)
        self.prime_norm = RMSNorm(D, config.norm_eps)
        self.prime = SwiGLU(D, config.e2e_prime_hidden)
        self.mlp_norm = RMSNorm(D, config.norm_eps)
        self.mlp = SwiGLU(D, config.mlp_hidden)

    def learned_prime(self) -> Prime:
        """The learned prime weights (P, D), (P, D), (D, P): W_0 of every sequence."""
        return self.prime.gate.weight, self.prime.up.weight, self.prime.down.weight

    def forward(
        self, x: Tensor, positions: Tensor, ring: RingKVState, prime: Prime
    ) -> tuple[Tensor, RingKVState]:
        """x (B, T, D) at positions (B, T), after the tokens `ring` holds -> (x, new ring)."""
        mixed = self.mixer(self.mixer_norm(x), positions, ring)
        x = x + mixed.y
        x = x + prime_apply(prime, self.prime_norm(x))
        return x + self.mlp(self.mlp_norm(x)), mixed.state


class E2ESuffix(nn.Module):
    """The suffix blocks and their inner loop (module docstring). One module, so that sharding
    (FSDP) treats the suffix as one unit: its inner gradients stay inside its forward."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(SuffixBlock(config) for _ in range(config.e2e_suffix_layers))

    def _empty_ring(self, batch: int) -> RingKVState:
        cfg, like = self.config, self.blocks[0].mixer.wq.weight
        return RingKVState.empty(batch, cfg.n_heads, cfg.window_size, cfg.head_dim, like=like)

    def init_state(self, batch: int) -> list[E2EState]:
        """Every suffix layer's state before any token: the learned prime weights (a copy per
        row), empty rings, an empty pending chunk."""
        cfg = self.config
        states = []
        for j, block in enumerate(self.blocks):
            prime = tuple(w.detach().expand(batch, *w.shape).clone() for w in block.learned_prime())
            pend_x = pend_ids = None
            if j == 0:
                pend_x = prime[0].new_zeros(batch, cfg.e2e_chunk_size, cfg.d_model)
                pend_ids = torch.zeros(
                    batch, cfg.e2e_chunk_size, dtype=torch.long, device=pend_x.device
                )
            ring = self._empty_ring(batch)
            states.append(E2EState.build(prime, ring, ring, pend_x, pend_ids))
        return states

    def forward(
        self,
        x: Tensor,
        ids: Tensor,
        positions: Tensor,
        head: Head,
        states: list[E2EState] | None = None,
        *,
        inner_lr_scale: float = 1.0,
    ) -> tuple[Tensor, list[E2EState] | None]:
        """Logits (B, T, V) of the suffix over its inputs x (B, T, D) (the prefix's output) for
        token ids (B, T) at positions (B, T); `head` is the final norm + LM head. Without
        `states` the sequence starts here; with them (a cache) it continues them, token by
        token unless every row is at position 0. The inner lr is `e2e_inner_lr *
        inner_lr_scale` (the training warm-up)."""
        lr = self.config.e2e_inner_lr * inner_lr_scale
        fresh = bool((positions[:, 0] == 0).all())
        if states is not None and not fresh:
            return self._stream(x, ids, positions, head, states, lr)
        return self._prefill(x, ids, positions, head, lr, want_state=states is not None)

    def _prefill(self, x, ids, positions, head, lr, want_state):
        """The chunk loop from the learned weights (their gradients flow into the model)."""
        B, T, _ = x.shape
        C = self.config.e2e_chunk_size
        prime = [tuple(w.expand(B, *w.shape) for w in b.learned_prime()) for b in self.blocks]
        rings = [self._empty_ring(B) for _ in self.blocks]
        outer = torch.is_grad_enabled()
        logits, before, start = [], rings, 0
        for start in range(0, T, C):
            end = min(start + C, T)
            targets = ids[:, start + 1 : end + 1] if end < T else None  # the last chunk waits
            before = rings
            args = (x[:, start:end], positions[:, start:end], targets, prime, rings, head, lr)
            if outer:
                out = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                out = self._chunk(*args)
            logits.append(out[0])
            prime, rings = out[1], out[2]
        states = None
        if want_state:
            pend_x = x.new_zeros(B, C, x.shape[2])
            pend_x[:, : T - start] = x[:, start:]
            pend_ids = ids.new_zeros(B, C)
            pend_ids[:, : T - start] = ids[:, start:]
            states = [
                E2EState.build(p, ring, old, *((pend_x, pend_ids) if j == 0 else (None, None)))
                for j, (p, ring, old) in enumerate(zip(prime, rings, before, strict=True))
            ]
        return torch.cat(logits, dim=1), states

    def _chunk(self, x, positions, targets, prime, rings, head, lr):
        """One chunk: its logits with `prime`, the rings after it, and (given its `targets`,
        (B, Tc)) the stepped prime weights. Under an outer graph the step is differentiable
        (create_graph); otherwise the weights are fresh leaves and every output is detached."""
        outer = torch.is_grad_enabled() and prime[0][0].requires_grad
        # The fused attention kernels have no double backward; the math one is plain autograd.
        math_attention = sdpa_kernel(SDPBackend.MATH) if outer else contextlib.nullcontext()
        with torch.enable_grad(), math_attention:
            if not outer:
                prime = [
                    tuple(w.detach().requires_grad_(targets is not None) for w in p) for p in prime
                ]
            h, new_rings = x, []
            for block, w, ring in zip(self.blocks, prime, rings, strict=True):
                h, ring = block(h, positions, ring, w)
                new_rings.append(ring)
            logits = head(h)
            if targets is not None:
                ce = F.cross_entropy(upcast(logits).transpose(1, 2), targets, reduction="none")
                loss = ce.mean(dim=1).sum()
                prime = clipped_sgd(prime, loss, lr, self.config.e2e_inner_clip, outer)
        if not outer:
            logits = logits.detach()
            prime = [tuple(w.detach() for w in p) for p in prime]
            new_rings = [r.map(Tensor.detach) for r in new_rings]
        return logits, prime, new_rings

    def _stream(self, x, ids, positions, head, states, lr):
        """Token by token from `states`, rows at any positions: a row whose token opens a new
        chunk first takes the step of the chunk it completed (recomputed from the pending
        inputs against the chunk's start rings), then every row reads its current weights."""
        C = self.config.e2e_chunk_size
        states = list(states)
        first = states[0]
        pend_x, pend_ids = first.pend_x.clone(), first.pend_ids.clone()  # owned: written below
        rows = torch.arange(x.shape[0], device=x.device)
        logits = []
        for t in range(x.shape[1]):
            pos = positions[:, t]
            due = (pos % C == 0) & (pos > 0)
            if bool(due.any()):
                states = self._catch_up(states, due, pend_x, pend_ids, ids[:, t], pos, head, lr)
            h, new = x[:, t : t + 1], []
            for block, state in zip(self.blocks, states, strict=True):
                h, ring = block(h, pos[:, None], state.ring, state.prime)
                new.append(E2EState.build(state.prime, ring, state.start))
            logits.append(head(h))
            slot = pos % C
            pend_x[rows, slot] = x[:, t]
            pend_ids[rows, slot] = ids[:, t]
            states = new
        states[0] = E2EState.build(
            states[0].prime, states[0].ring, states[0].start, pend_x, pend_ids
        )
        return torch.cat(logits, dim=1), states

    def _catch_up(self, states, due, pend_x, pend_ids, next_ids, pos, head, lr):
        """The `due` rows' step over the chunk that ends before `pos`; their rings at the
        step's end are the new chunk's start rings. Other rows are left as they are."""
        C = self.config.e2e_chunk_size
        idx = due.nonzero().squeeze(1)
        chunk_pos = (pos[idx] - C)[:, None] + torch.arange(C, device=pos.device)
        targets = torch.cat([pend_ids[idx, 1:], next_ids[idx, None]], dim=1)
        prime = [tuple(w[idx] for w in s.prime) for s in states]
        starts = [s.start.map(lambda t: t[idx]) for s in states]
        _, stepped, _ = self._chunk(pend_x[idx], chunk_pos, targets, prime, starts, head, lr)
        out = []
        for state, new_prime in zip(states, stepped, strict=True):
            prime = []
            for old, new in zip(state.prime, new_prime, strict=True):
                merged = old.clone()
                merged[idx] = new.to(old.dtype)
                prime.append(merged)
            start = state.ring.where_rows(due, state.start)
            out.append(E2EState.build(tuple(prime), state.ring, start))
        return out
