"""`ModelConfig`: the validated description of one LM of this project.

The token mixer of every layer is `mixer`, or per layer `layer_mixers` (hybrid stacks, e.g. TTT
in the top layers only): `ttt_linear` (docs/ttt_linear.md), `lact` (large-chunk fast weights +
sliding-window attention, docs/lact.md), the baselines `attention` and `swa` (sliding-window
attention), and `none`, the no-context control: a block without token mixing.

Presets are looked up by name (`ModelConfig.from_preset("small_cpu", n_layers=2)`), and the
parameter count is computed from the config alone, without allocating a single tensor.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, ClassVar

from pydantic import Field, model_validator

from .identity import IdentityConfig
from .names import DecodeMode, Family, Mixer
from .ops.backends import OpsBackend


class ModelConfig(IdentityConfig):
    """Shape and inner-loop settings of a `TTTLM`. Frozen: derive variants with `model_copy`.

    Identity (`identity()`) is what the weights mean: shapes, the inner loop's math and the
    initialisation. Operational fields choose how the same function is computed."""

    IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            # shapes: another value is another parameter set
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "mlp_hidden",
            "mixer",
            "layer_mixers",
            "tie_embeddings",
            # the function the weights are trained for: chunk b sets the anchored GD and its
            # 2/b scale, eta the inner step, the eps and RoPE base enter every forward
            "chunk_size",
            "eta_base",
            "eta_per_head",
            "ln_eps",
            "norm_eps",
            "rope_theta",
            # LaCT and sliding-window attention: what a token sees and how fast weights learn
            "window_size",
            "lact_chunk_size",
            "lact_heads",
            "lact_base_lr",
            "lact_momentum",
            "lact_muon",
            "lact_low_rank",
            # TTT-E2E: which blocks carry a test-time-trained prime MLP and how it learns
            "e2e_suffix_layers",
            "e2e_chunk_size",
            "e2e_inner_lr",
            "e2e_inner_clip",
            "e2e_prime_hidden",
            # the weights at step 0 of a run
            "init_std",
        }
    )
    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            # recomputation in backward trades memory for time; outputs and gradients are
            # identical (tests/ttt_core/test_model.py), so raising it to fit memory resumes
            "checkpoint_n_chunks",
            # how decode advances a cache; training and prefill do not read it, and a saved
            # cache carries its own mode
            "decode_mode",
            # which kernel computes the dual form: same results (tests/ttt_core/test_backends.py),
            # other speed and memory
            "ops_backend",
        }
    )

    vocab_size: int = Field(ge=2, description="Tokenizer vocabulary size.")
    d_model: int = Field(ge=1, description="Residual stream width D.")
    n_layers: int = Field(ge=1, description="Blocks in the stack.")
    n_heads: int = Field(ge=1, description="Heads H; head size d = D / H.")
    mlp_hidden: int = Field(ge=1, description="SwiGLU intermediate width.")
    mixer: Mixer = Field(default="ttt_linear", description="Token mixer of every layer.")
    layer_mixers: tuple[Mixer, ...] | None = Field(
        default=None, description="One mixer per layer (a hybrid stack); overrides `mixer`."
    )
    chunk_size: int = Field(default=16, ge=1, description="TTT mini-batch size b.")
    eta_base: float = Field(default=0.01, gt=0, description="Inner learning-rate scale.")
    eta_per_head: bool = Field(default=True, description="One gated eta per head (else scalar).")
    ln_eps: float = Field(default=1e-6, gt=0, description="eps of the inner per-head LayerNorm.")
    norm_eps: float = Field(default=1e-5, gt=0, description="eps of the block RMSNorms.")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base.")
    window_size: int = Field(
        default=2048, ge=1, description="Tokens a sliding-window attention query sees (swa, lact)."
    )
    lact_chunk_size: int = Field(
        default=2048, ge=1, description="LaCT: tokens per fast-weight update (apply, then update)."
    )
    lact_heads: int = Field(default=4, ge=1, description="LaCT: fast-weight heads (d = D / heads).")
    lact_base_lr: float = Field(
        default=1e-3, gt=0, description="LaCT: inner lr at a zero lr projection (softplus shifted)."
    )
    lact_momentum: bool = Field(default=True, description="LaCT: heavy-ball momentum per chunk.")
    lact_muon: bool = Field(default=False, description="LaCT: Newton-Schulz (Muon) update steps.")
    lact_low_rank: int = Field(
        default=0, ge=0, description="LaCT: rank of the initial W0, W2 (L R + I/2); 0 = full rank."
    )
    e2e_suffix_layers: int = Field(
        default=0,
        ge=0,
        description="TTT-E2E: the last N blocks carry a prime MLP trained on the context at test "
        "time (docs/ttt_e2e.md); 0 = off. Needs mixer='swa'.",
    )
    e2e_chunk_size: int = Field(
        default=1024, ge=1, description="TTT-E2E: tokens per inner SGD step of the prime MLPs."
    )
    e2e_inner_lr: float = Field(
        default=1.0, ge=0, description="TTT-E2E: inner SGD learning rate (0: the plain stack)."
    )
    e2e_inner_clip: float = Field(
        default=1.0, gt=0, description="TTT-E2E: per-sequence global-norm clip of the inner step."
    )
    e2e_prime_hidden: int = Field(
        default=1024, ge=1, description="TTT-E2E: SwiGLU width of each prime MLP."
    )
    tie_embeddings: bool = Field(default=False, description="Output head shares the embedding.")
    init_std: float = Field(default=0.02, gt=0, description="Std of the normal weight init.")
    checkpoint_n_chunks: int = Field(
        default=0, ge=0, description="Chunks per checkpoint-through-time segment; 0 disables."
    )
    decode_mode: DecodeMode = Field(
        default="online",
        description="How decode advances the TTT state: online or chunked GD (docs/ttt_linear.md).",
    )
    ops_backend: OpsBackend = Field(
        default="auto",
        description="Kernel for the TTT-Linear dual form and the LaCT chunk loop: autograd "
        "(plain loop), fused (manual backward), triton (TTT-Linear kernels; CUDA or "
        "TRITON_INTERPRET=1), auto (TTT-Linear: triton on CUDA, else fused; LaCT: fused). Same "
        "results; changes speed and memory only.",
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim = d_model / n_heads = {self.head_dim} must be even (RoPE)")
        if "lact" in self.mixers:
            self._check_lact()
        if self.e2e_suffix_layers:
            self._check_e2e()
        if self.layer_mixers is not None and len(self.layer_mixers) != self.n_layers:
            raise ValueError(
                f"layer_mixers has {len(self.layer_mixers)} entries but n_layers is "
                f"{self.n_layers}: give one mixer per layer"
            )
        return self

    def _check_lact(self) -> None:
        if self.d_model % self.lact_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by lact_heads ({self.lact_heads})"
            )
        d = self.d_model // self.lact_heads
        if self.lact_low_rank >= d:
            raise ValueError(
                f"lact_low_rank ({self.lact_low_rank}) must be below the fast-weight head size "
                f"d_model / lact_heads = {d}; 0 means full rank"
            )
        if self.ops_backend == "triton":
            raise ValueError(
                "ops_backend='triton' has no LaCT kernel; use 'fused' (manual backward), "
                "'autograd' or 'auto'"
            )

    def _check_e2e(self) -> None:
        if self.e2e_suffix_layers > self.n_layers:
            raise ValueError(
                f"e2e_suffix_layers ({self.e2e_suffix_layers}) exceeds n_layers ({self.n_layers})"
            )
        if set(self.mixers) != {"swa"}:
            raise ValueError(
                f"e2e_suffix_layers needs mixer='swa' in every layer (TTT-E2E is a sliding-window "
                f"Transformer); this stack is {self.mixer_name}"
            )

    @property
    def prefix_layers(self) -> int:
        """Blocks that run once over the whole sequence (all of them without TTT-E2E)."""
        return self.n_layers - self.e2e_suffix_layers

    @property
    def mixers(self) -> tuple[Mixer, ...]:
        """The mixer of each layer, bottom to top."""
        return self.layer_mixers or (self.mixer,) * self.n_layers

    @property
    def mixer_name(self) -> str:
        """The mixer, `e2e` for a TTT-E2E stack, or for a hybrid its runs bottom to top
        (`2xattention+2xttt_linear`; the characters are safe in a folder name)."""
        if self.e2e_suffix_layers:
            return "e2e"
        runs = [(m, len(list(group))) for m, group in groupby(self.mixers)]
        if len(runs) == 1:
            return runs[0][0]
        return "+".join(m if n == 1 else f"{n}x{m}" for m, n in runs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named preset with `overrides` applied and the result validated again."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.model_validate({**PRESETS[name], **overrides})

    def num_params(self) -> int:
        """Exact trainable-parameter count of `TTTLM(self)`, computed from shapes only."""
        D = self.d_model
        blocks = sum(self._mixer_params(m) for m in self.mixers)
        blocks += self.n_layers * (3 * D * self.mlp_hidden + D)  # SwiGLU + its RMSNorm weight
        blocks += self.e2e_suffix_layers * (3 * D * self.e2e_prime_hidden + D)  # prime MLP + norm
        embeddings = self.vocab_size * D * (1 if self.tie_embeddings else 2)
        return blocks + embeddings + D  # + final RMSNorm

    def _mixer_params(self, mixer: Mixer) -> int:
        """Parameters of one layer's mixer sublayer, its RMSNorm included."""
        D, H, d = self.d_model, self.n_heads, self.head_dim
        if mixer == "none":
            return 0  # no mixer and no norm in front of it
        if mixer in ("attention", "swa"):
            return 4 * D * D + D  # Q, K, V, O projections + RMSNorm
        if mixer == "lact":
            return self._lact_params()
        eta_out = H if self.eta_per_head else 1
        # Q, K, V, O projections + eta gate + W0 + inner LN weight and bias + RMSNorm
        return 4 * D * D + eta_out * D + H * d * d + 2 * H * d + D

    def _lact_params(self) -> int:
        """A LaCT layer: Q, K, V, O + fast q/k scale and offset + lr projection (weight, bias) +
        W0, W2 (full or low-rank) + W1 + output norm + output scale projection (+ momentum
        projection) + the block's RMSNorm."""
        D, Hf, r = self.d_model, self.lact_heads, self.lact_low_rank
        d = D // Hf
        w0_w2 = 2 * Hf * (2 * d * r if r > 0 else d * d)
        per_head_linears = (2 if self.lact_momentum else 1) * (D * Hf + Hf)
        return (
            4 * D * D
            + 4 * D
            + (3 * Hf * D + 3 * Hf)
            + w0_w2
            + Hf * d * d
            + d
            + per_head_linears
            + D
        )


def family_settings(family: Family, model: dict[str, Any]) -> dict[str, Any]:
    """The model fields that make `model` (ModelConfig data) a `family` stack: the mixer, and
    for `e2e` swa with a suffix (`model`'s own if it has one, else the top quarter of its blocks,
    at least one); any other family has no suffix."""
    if family != "e2e":
        return {"mixer": family, "e2e_suffix_layers": 0}
    layers = model.get("e2e_suffix_layers") or max(1, int(model["n_layers"]) // 4)
    return {"mixer": "swa", "e2e_suffix_layers": layers}


def family_of(model: dict[str, Any]) -> str:
    """The family of `model` (ModelConfig data, partial allowed): `e2e` with a suffix, else its
    mixer (None when it names none)."""
    return "e2e" if model.get("e2e_suffix_layers") else model.get("mixer")


# Nominal sizes (in parameters at a 32k vocabulary) that presets are checked against.
NOMINAL_PARAMS: dict[str, float] = {
    "bringup_125m": 125e6,
    "lact_760m": 760e6,
    "e2e_125m": 125e6,
    "bringup_1p3b": 1.3e9,
    "scale_47b": 47e9,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Trains in seconds; used by unit and end-to-end tests.
    "debug_tiny": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, mlp_hidden=176, chunk_size=8
    ),
    # ~7M parameters at an 8k vocabulary: minutes of training on 2 CPU cores.
    "small_cpu": dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, mlp_hidden=704),
    # LaCT that trains in minutes here: 2 fast-weight heads of 128, chunk and window 64.
    "lact_small_cpu": dict(
        vocab_size=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        mlp_hidden=704,
        mixer="lact",
        lact_heads=2,
        lact_chunk_size=64,
        window_size=64,
    ),
    # The LaCT reference's 760M language model (lact_llm/configs/760M_lact_swiglu_nh4_fwlow_rank_
    # momentum.json; its `_muon` variant is lact_muon=True). The MLP width is its default,
    # 256-rounded 8/3 x hidden.
    "lact_760m": dict(
        vocab_size=32000,
        d_model=1536,
        n_layers=24,
        n_heads=24,
        mlp_hidden=4096,
        mixer="lact",
        lact_heads=4,
        lact_chunk_size=2048,
        window_size=2048,
        lact_low_rank=32,
        lact_momentum=True,
        lact_muon=False,
        rope_theta=1e6,
        norm_eps=1e-6,
    ),
    # TTT-E2E that trains in minutes here: small_cpu's shape as sliding-window attention, the
    # top layer carrying a prime MLP; the prime width (352) comes out of every regular MLP
    # (704 -> 616 = 704 - 352/4), so the count stays within 0.1% of swa's small_cpu.
    "e2e_small_cpu": dict(
        vocab_size=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        mlp_hidden=616,
        mixer="swa",
        window_size=64,
        e2e_suffix_layers=1,
        e2e_chunk_size=32,
        e2e_prime_hidden=352,
    ),
    # The TTT-E2E reference's 125M (test-time-training/e2e, configs/model/125m.yaml +
    # configs/experiment/125m/pretrain/pretrain-125m-e2e.yaml): 12 layers of 768, 12 heads,
    # SWA window 8192 (sliding_window_size), 3 suffix layers (suffix_len), chunk 1024
    # (mini_batch_size), inner SGD lr 1 clipped at 1 (optimizer_inner), the regular and the
    # prime MLPs both 1664 wide (intermediate_size, shrunk from 2048), rope_theta 5e5, rms eps
    # 1e-6, tied embeddings. Ours: the 32k vocabulary of the other presets, not Llama 3's 128k.
    "e2e_125m": dict(
        vocab_size=32000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        mlp_hidden=1664,
        mixer="swa",
        window_size=8192,
        e2e_suffix_layers=3,
        e2e_chunk_size=1024,
        e2e_inner_lr=1.0,
        e2e_inner_clip=1.0,
        e2e_prime_hidden=1664,
        rope_theta=5e5,
        norm_eps=1e-6,
        tie_embeddings=True,
    ),
    # Reference sizes of the paper's Llama-style ladder.
    "bringup_125m": dict(
        vocab_size=32000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        mlp_hidden=2048,
        checkpoint_n_chunks=16,
    ),
    "bringup_1p3b": dict(
        vocab_size=32000,
        d_model=2048,
        n_layers=24,
        n_heads=32,
        mlp_hidden=5504,
        checkpoint_n_chunks=16,
    ),
    # Paper plan for one 8-GPU node (H = 64 heads of d = 128, the benchmark's shape).
    "scale_47b": dict(
        vocab_size=32000,
        d_model=8192,
        n_layers=58,
        n_heads=64,
        mlp_hidden=22016,
        checkpoint_n_chunks=16,
    ),
}
