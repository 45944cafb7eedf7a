"""Per-layer inference state of each mixer, and the per-layer half of cache surgery.

Batch is the first dim of every tensor. Every state offers what the cache builds on: `map` (a
row-wise function applied to every tensor: select, clone, to), `stack` (concatenate rows),
`where_rows` (keep some rows of an earlier state), `tensors`/`from_tensors` (save, load) and
`nbytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from itertools import count

import torch
from torch import Tensor


@dataclass
class _TensorFields:
    """A state that is nothing but its tensor fields (None skipped): surgery maps over them."""

    def map(self, fn: Callable[[Tensor], Tensor]):
        return replace(self, **{name: fn(t) for name, t in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]):
        return cls(**tensors)

    @classmethod
    def stack(cls, states: list):
        """The rows of every state, in order."""
        names = states[0].tensors()
        return cls(**{name: torch.cat([s.tensors()[name] for s in states]) for name in names})

    def where_rows(self, active: Tensor, old):
        """Row i of this state where `active[i]` (B,) bool, else row i of `old`."""
        theirs = old.tensors()
        return replace(
            self,
            **{
                name: torch.where(active.view(-1, *(1,) * (t.dim() - 1)), t, theirs[name])
                for name, t in self.tensors().items()
            },
        )


@dataclass
class FastWeightState(_TensorFields):
    """TTT-Linear state of one layer.

    W: (B, H, d, d) fp32, the current fast weight (what the next token reads).
    anchor: (B, H, d, d) fp32, chunked decode only: W at the start of the current chunk; the
    running sum of the chunk's updates so far is `anchor - W`.
    """

    W: Tensor
    anchor: Tensor | None = None

    @property
    def pending(self) -> Tensor | None:
        """Sum of `eta_s g_s k_s^T` over the current chunk's tokens so far (chunked decode)."""
        return None if self.anchor is None else self.anchor - self.W


@dataclass
class EmptyState(_TensorFields):
    """State of a layer without token mixing (the no-context control): nothing."""


@dataclass
class RingKVState(_TensorFields):
    """Sliding-window attention state of one layer: a ring of `window` slots, fixed in size.

    k, v: (B, H, window, d); pos: (B, window) int64, the position held by each slot (-1: empty).
    Position p lives in slot p mod window, so a write replaces the token that left the window.
    """

    k: Tensor
    v: Tensor
    pos: Tensor

    @staticmethod
    def empty(batch: int, heads: int, window: int, head_dim: int, like: Tensor) -> RingKVState:
        k, v = (like.new_zeros(batch, heads, window, head_dim) for _ in range(2))
        pos = torch.full((batch, window), -1, dtype=torch.long, device=like.device)
        return RingKVState(k, v, pos)

    def write(self, k: Tensor, v: Tensor, positions: Tensor) -> RingKVState:
        """A new ring with the last min(T, window) of k, v (B, H, T, d) at positions (B, T) in
        their slots (the older ring is left as it was)."""
        window = self.pos.shape[1]
        n = min(k.shape[2], window)
        slots = positions[:, -n:] % window  # (B, n), distinct: consecutive positions
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        ring_k, ring_v, pos = self.k.clone(), self.v.clone(), self.pos.clone()
        ring_k[rows, :, slots] = k[:, :, -n:].transpose(1, 2).to(ring_k.dtype)  # (B, n, H, d)
        ring_v[rows, :, slots] = v[:, :, -n:].transpose(1, 2).to(ring_v.dtype)
        pos[rows, slots] = positions[:, -n:]
        return RingKVState(ring_k, ring_v, pos)


@dataclass
class LactState(_TensorFields):
    """LaCT state of one layer, fixed in size (docs/lact.md, "Cached decoding").

    W0, W1, W2: (B, Hf, d, d), the fast weights after the last complete chunk; M0, M1, M2: their
    momentum buffers (None without momentum). buf_k, buf_v (B, Hf, C, d), buf_lr (B, Hf, C, 3),
    buf_gate (B, Hf, C; None without momentum): the keys, values, learning rates and momentum
    gates of the current partial chunk, position p in slot p mod C, zeros past the tokens
    written. ring_k, ring_v, ring_pos: the sliding-window branch (`RingKVState`).
    """

    W0: Tensor
    W1: Tensor
    W2: Tensor
    buf_k: Tensor
    buf_v: Tensor
    buf_lr: Tensor
    ring_k: Tensor
    ring_v: Tensor
    ring_pos: Tensor
    M0: Tensor | None = None
    M1: Tensor | None = None
    M2: Tensor | None = None
    buf_gate: Tensor | None = None

    @property
    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.W0, self.W1, self.W2

    @property
    def momentum(self) -> tuple[Tensor, Tensor, Tensor] | None:
        return None if self.M0 is None else (self.M0, self.M1, self.M2)

    @property
    def ring(self) -> RingKVState:
        return RingKVState(self.ring_k, self.ring_v, self.ring_pos)

    @property
    def buffers(self) -> dict[str, Tensor | None]:
        """The partial-chunk buffers by name: k, v, lr, gate."""
        return {"k": self.buf_k, "v": self.buf_v, "lr": self.buf_lr, "gate": self.buf_gate}

    @staticmethod
    def build(weights, momentum, buffers: dict[str, Tensor | None], ring: RingKVState) -> LactState:
        """A state from its parts: weights and momentum (3-tuples; momentum may be None), the
        buffers by name (`buffers`) and the ring."""
        M = momentum or (None, None, None)
        return LactState(
            W0=weights[0], W1=weights[1], W2=weights[2],
            buf_k=buffers["k"], buf_v=buffers["v"], buf_lr=buffers["lr"], buf_gate=buffers["gate"],
            ring_k=ring.k, ring_v=ring.v, ring_pos=ring.pos, M0=M[0], M1=M[1], M2=M[2],
        )  # fmt: skip


@dataclass
class E2EState(_TensorFields):
    """TTT-E2E state of one suffix layer, fixed in size (docs/ttt_e2e.md, "Cached decoding").

    gate, up: (B, P, D) and down: (B, D, P), this row's prime MLP weights after its last inner
    step. ring_*: the layer's sliding-window ring now; start_*: the ring as it was when the
    current chunk began (what the chunk's inner step recomputes against). First suffix layer
    only: pend_x (B, C, D), the suffix inputs of the current chunk's tokens, and pend_ids (B, C)
    int64 their token ids, position p in slot p mod C (the step's inputs and labels).
    """

    gate: Tensor
    up: Tensor
    down: Tensor
    ring_k: Tensor
    ring_v: Tensor
    ring_pos: Tensor
    start_k: Tensor
    start_v: Tensor
    start_pos: Tensor
    pend_x: Tensor | None = None
    pend_ids: Tensor | None = None

    @property
    def prime(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.gate, self.up, self.down

    @property
    def ring(self) -> RingKVState:
        return RingKVState(self.ring_k, self.ring_v, self.ring_pos)

    @property
    def start(self) -> RingKVState:
        return RingKVState(self.start_k, self.start_v, self.start_pos)

    @staticmethod
    def build(prime, ring: RingKVState, start: RingKVState, pend_x=None, pend_ids=None):
        """A state from its parts: the prime weights (gate, up, down), both rings, and the
        pending chunk (first suffix layer only)."""
        return E2EState(
            gate=prime[0], up=prime[1], down=prime[2],
            ring_k=ring.k, ring_v=ring.v, ring_pos=ring.pos,
            start_k=start.k, start_v=start.v, start_pos=start.pos,
            pend_x=pend_x, pend_ids=pend_ids,
        )  # fmt: skip


class _KVStore:
    """Keys and values (B, H, capacity, d) shared by the `KVState`s that view them.

    `version` names the one state that may write into free slots in place (the latest made from
    this store); `lineage` is shared by every store that continues the same sequences (copies
    made to grow or to branch), so `where_rows` can check its argument.
    """

    _lineages = count()

    def __init__(self, k: Tensor, v: Tensor, lineage: int | None = None):
        self.k, self.v = k, v
        self.version = 0
        self.lineage = next(self._lineages) if lineage is None else lineage

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def copy(self, capacity: int, used: int) -> _KVStore:
        """A store of `capacity` slots holding this one's first `used` (the rest zeros: masked
        slots must be finite, since softmax weight 0 times NaN is NaN)."""
        B, H, _, d = self.k.shape
        k, v = (t.new_zeros(B, H, capacity, d) for t in (self.k, self.v))
        k[:, :, :used] = self.k[:, :, :used]
        v[:, :, :used] = self.v[:, :, :used]
        return _KVStore(k, v, self.lineage)


class KVState:
    """Attention state of one layer, gpt-fast style: keys and values live in a preallocated
    store, new ones are written into free slots in place, and the store doubles when full.

    Row b's tokens are slots [0, lengths[b]) (lengths: (B,) int64). `extent` (a Python int,
    >= every length) is how many slots attention reads; rows are `ragged` when their lengths
    may differ, and only then does attention need a per-row mask.
    Copy-on-write keeps every state valid: only the latest state made from a store writes into
    it; an older one (a cache decoded from twice, a branch) first copies its slots.
    """

    def __init__(self, store: _KVStore, lengths: Tensor, extent: int, ragged: bool):
        self._store, self.lengths, self.extent, self.ragged = store, lengths, extent, ragged
        self._version = store.version
        self._consumed = False

    @staticmethod
    def empty(batch: int, heads: int, head_dim: int, like: Tensor) -> KVState:
        """No tokens and no slots yet; the first write allocates what it needs."""
        k, v = (like.new_zeros(batch, heads, 0, head_dim) for _ in range(2))
        lengths = torch.zeros(batch, dtype=torch.long, device=like.device)
        return KVState(_KVStore(k, v), lengths, extent=0, ragged=False)

    @property
    def k(self) -> Tensor:
        """(B, H, extent, d): a view of the slots attention reads."""
        return self._store.k[:, :, : self.extent]

    @property
    def v(self) -> Tensor:
        return self._store.v[:, :, : self.extent]

    @property
    def capacity(self) -> int:
        return self._store.capacity

    def append(self, k: Tensor, v: Tensor) -> KVState:
        """This state with T more tokens per row (k, v: (B, H, T, d)) in the slots after each
        row's length; in place when this is the store's latest state and it has room."""
        self._check_live()
        T = k.shape[2]
        extent = self.extent + T
        store = self._store
        if extent > store.capacity:
            store = store.copy(max(extent, 2 * store.capacity), self.extent)
        elif store.version != self._version:  # a later state writes here: branch off
            store = store.copy(store.capacity, self.extent)
        if self.ragged:
            slots = self.lengths[:, None] + torch.arange(T, device=k.device)  # (B, T)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            store.k[rows, :, slots] = k.transpose(1, 2).to(store.k.dtype)  # (B, T, H, d)
            store.v[rows, :, slots] = v.transpose(1, 2).to(store.v.dtype)
        else:
            store.k[:, :, self.extent : extent] = k
            store.v[:, :, self.extent : extent] = v
        store.version += 1
        return KVState(store, self.lengths + T, extent, self.ragged)

    def query_mask(self, n_new: int) -> Tensor | None:
        """Slots the last `n_new` tokens may attend to (bool, True = attend): (B, 1, T, S) for
        ragged rows, (T, S) for aligned rows, None for one token in aligned rows (every slot)."""
        if n_new == 1 and not self.ragged:
            return None
        device = self.lengths.device
        slots = torch.arange(self.extent, device=device)
        if self.ragged:
            query_slots = (self.lengths - n_new)[:, None] + torch.arange(n_new, device=device)
            return slots <= query_slots[:, None, :, None]
        return slots <= (self.extent - n_new + torch.arange(n_new, device=device))[:, None]

    def map(self, fn: Callable[[Tensor], Tensor]) -> KVState:
        """`fn` applied to every row-first tensor: a new store holding the slots up to the
        longest resulting row (rows selected away take their slots with them, so a batch that
        rows keep joining and leaving never reads more slots than its longest row has)."""
        self._check_live()
        lengths = fn(self.lengths)
        extent = int(lengths.max()) if lengths.numel() else 0
        store = _KVStore(*(fn(t[:, :, :extent]) for t in (self._store.k, self._store.v)))
        return KVState(store, lengths, extent, _is_ragged(lengths, extent))

    @staticmethod
    def stack(states: list[KVState]) -> KVState:
        """Rows of every state, in a store as large as the largest."""
        for s in states:
            s._check_live()
        extent = max(s.extent for s in states)
        first = states[0]._store
        B = sum(s.lengths.shape[0] for s in states)
        H, _, d = first.k.shape[1:]
        capacity = max(s.capacity for s in states)
        k, v = (t.new_zeros(B, H, capacity, d) for t in (first.k, first.v))
        row = 0
        for s in states:
            n = s.lengths.shape[0]
            k[row : row + n, :, : s.extent] = s.k
            v[row : row + n, :, : s.extent] = s.v
            row += n
        lengths = torch.cat([s.lengths for s in states])
        return KVState(_KVStore(k, v), lengths, extent, _is_ragged(lengths, extent))

    def where_rows(self, active: Tensor, old: KVState) -> KVState:
        """Row i of this state where `active[i]`, else of `old`, the state this one was decoded
        from: every row's slots stay where they are, only the lengths of rows not active go
        back. Consumes this state (the result may overwrite what its frozen rows added)."""
        self._check_live()
        if old._store.lineage != self._store.lineage:
            raise ValueError("where_rows: the frozen cache must be the one this was decoded from")
        lengths = torch.where(active, self.lengths, old.lengths)
        ragged = self.ragged or not bool(active.all())
        result = KVState(self._store, lengths, self.extent, ragged)
        result._version = self._version
        self._consumed = True
        return result

    def tensors(self) -> dict[str, Tensor]:
        """The used slots and the lengths (what a saved cache holds)."""
        self._check_live()
        return {"k": self.k, "v": self.v, "lengths": self.lengths}

    @staticmethod
    def from_tensors(tensors: dict[str, Tensor]) -> KVState:
        k, v, lengths = tensors["k"], tensors["v"], tensors["lengths"]
        extent = k.shape[2]
        return KVState(_KVStore(k, v), lengths, extent, _is_ragged(lengths, extent))

    def nbytes(self) -> int:
        """Bytes allocated: the whole capacity, used or not, and the lengths."""
        held = (self._store.k, self._store.v, self.lengths)
        return sum(t.numel() * t.element_size() for t in held)

    def _check_live(self) -> None:
        if self._consumed:
            raise RuntimeError(
                "this KV state was consumed by where_rows; use the cache where_rows returned"
            )


def _is_ragged(lengths: Tensor, extent: int) -> bool:
    """Whether some row's length is not `extent` (then attention needs a per-row mask)."""
    return bool((lengths != extent).any())
