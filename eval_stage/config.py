"""Pydantic configs of the evals: the CLI builds them from flags, a Prefect flow passes them.

Configs describe *what* to measure; the models come separately (`LoadedModel`s), so the same
config evaluates a TTT model and its attention baseline.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ttt_core.ops import OpsBackend
from ttt_core.validation import ConfigModel

DecodeMode = Literal["online", "chunked"]
BenchOp = Literal["dual", "primal_anchored", "online", "floor"]
BenchMode = Literal["forward", "forward_backward"]

PositiveInt = Annotated[int, Field(ge=1)]


def _strictly_increasing(values: list, name: str) -> list:
    if not values:
        raise ValueError(f"{name} needs at least one value")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be strictly increasing, got {values}")
    return values


VERIFY_DATA = Field(
    True, description="check the val shards (sha256, row length, id range) before reading them"
)
BOOTSTRAP_SAMPLES = Field(
    1000, ge=100, description="bootstrap resamples of the sequences behind each 95% interval"
)
BOOTSTRAP_SEED = Field(
    0, ge=0, description="seed of the bootstrap resampling (recorded in the result's config)"
)


class PerplexityConfig(ConfigModel):
    """Token-exact validation loss over consecutive rows of a shard directory's val split."""

    data: Path = Field(description="shard directory (data_stage output)")
    verify_data: bool = VERIFY_DATA
    batch_size: int = Field(8, ge=1, description="rows per forward pass")
    seq_len: int | None = Field(
        None, ge=1, description="tokens predicted per row; rows are cropped; None: the shards'"
    )
    max_batches: int | None = Field(None, ge=1, description="None: the whole val split")
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED


class PositionLossConfig(ConfigModel):
    """Mean next-token loss by token position at multiples of the training length."""

    data: Path = Field(description="shard directory (data_stage output)")
    verify_data: bool = VERIFY_DATA
    train_len: int | None = Field(
        None,
        ge=2,
        description="None: the length the model was trained at (its export says), else the "
        "shards' seq_len",
    )
    multipliers: list[PositiveInt] = Field(
        default_factory=lambda: [1, 2, 4], description="lengths as multiples of train_len"
    )
    sequences: int = Field(16, ge=1, description="sequences per length (fewer if val is short)")
    batch_size: int = Field(4, ge=1, description="sequences per forward pass")
    buckets: Literal["log", "linear"] = Field("log", description="spacing of the position buckets")
    n_buckets: int = Field(16, ge=1, description="position buckets per length")
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED

    @field_validator("multipliers")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        return _strictly_increasing(v, "multipliers")


class NiahConfig(ConfigModel):
    """Passkey retrieval: `trials` prompts per (context length, needle depth) cell.

    The defaults are the full grid, for models trained at a length of 2048 or more; the small
    pipeline presets scale it down (short contexts, a short key, few candidates)."""

    data: Path = Field(description="shard directory: val rows are the haystacks")
    verify_data: bool = VERIFY_DATA
    contexts: list[Annotated[int, Field(ge=8)]] = Field(
        default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192],
        description="prompt lengths in tokens",
    )
    depths: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [i / 10 for i in range(11)],
        description="needle position as a fraction of the haystack",
    )
    trials: int = Field(5, ge=1, description="prompts per (context, depth) cell")
    digits: int = Field(5, ge=1, le=20, description="passkey length in digits")
    scoring: Literal["rank", "greedy"] = Field(
        "rank",
        description="rank: correct when the passkey is the most likely of `candidates` keys "
        "after the question (chance 1/candidates); greedy: the greedily generated digits must "
        "equal it (chance 1/(9 x 10^(digits-1)))",
    )
    candidates: int = Field(
        10, ge=2, description="keys ranked per prompt with scoring=rank: the passkey and "
        "candidates - 1 random distractor keys of the same length"
    )  # fmt: skip
    seed: int = Field(0, ge=0, description="seed of prompts, keys and the accuracy interval")
    batch_size: int = Field(
        4, ge=1, description="prompts (and then candidate answers) per forward pass"
    )
    bootstrap_samples: int = Field(
        1000, ge=100, description="bootstrap resamples of the cases behind the accuracy interval"
    )

    @field_validator("contexts", "depths")
    @classmethod
    def _increasing(cls, v: list, info: ValidationInfo) -> list:
        return _strictly_increasing(v, info.field_name)

    @model_validator(mode="after")
    def _check(self) -> NiahConfig:
        if self.scoring == "greedy" and "candidates" in self.model_fields_set:
            raise ValueError("candidates is for scoring=rank; greedy scoring generates the key")
        keys = 9 * 10 ** (self.digits - 1)
        if self.candidates > keys:
            raise ValueError(
                f"candidates {self.candidates} > the {keys} keys of {self.digits} digits"
            )
        return self


class LongContextConfig(ConfigModel):
    """Several models on the same val sequences at several lengths: the loss of each sequence's
    second half (what the extra context buys), paired against the first model, passkey accuracy,
    and the decode state, latency and memory after a prompt of each length."""

    data: Path = Field(description="shard directory (data_stage output)")
    verify_data: bool = VERIFY_DATA
    lengths: list[Annotated[int, Field(ge=16)]] = Field(
        default_factory=lambda: [256, 512, 1024, 2048], description="sequence lengths in tokens"
    )
    sequences: int = Field(16, ge=2, description="val sequences per length (fewer if val is short)")
    batch_size: int = Field(2, ge=1, description="sequences per forward pass")
    niah_trials: int = Field(
        4, ge=0, description="passkey prompts per (length, depth); 0: no passkey eval"
    )
    niah_depths: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.1, 0.5, 0.9], description="needle depths (haystack fraction)"
    )
    niah_digits: int = Field(3, ge=1, le=20, description="passkey length in digits")
    niah_candidates: int = Field(5, ge=2, description="keys ranked per passkey prompt")
    decode_tokens: int = Field(16, ge=1, description="timed decode steps after each prompt")
    seed: int = Field(0, ge=0, description="seeds the passkey prompts and the latency prompt")
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED

    @field_validator("lengths", "niah_depths")
    @classmethod
    def _increasing(cls, v: list, info: ValidationInfo) -> list:
        return _strictly_increasing(v, info.field_name)

    @model_validator(mode="after")
    def _check(self) -> LongContextConfig:
        keys = 9 * 10 ** (self.niah_digits - 1)
        if self.niah_candidates > keys:
            raise ValueError(
                f"niah_candidates {self.niah_candidates} > the {keys} keys of "
                f"{self.niah_digits} digits"
            )
        return self

    def niah(self) -> NiahConfig:
        """The passkey grid at these lengths (rank scoring, as `niah`)."""
        return NiahConfig(
            data=self.data,
            verify_data=False,  # verified once, by the caller
            contexts=self.lengths,
            depths=self.niah_depths,
            trials=max(self.niah_trials, 1),
            digits=self.niah_digits,
            candidates=self.niah_candidates,
            seed=self.seed,
            batch_size=self.batch_size,
            bootstrap_samples=self.bootstrap_samples,
        )


class LmEvalConfig(ConfigModel):
    """lm-evaluation-harness on local tasks: the built-in `ttt_cloze` (from the val split of
    `data`) and the YAML tasks in `task_dir`."""

    data: Path = Field(description="shard directory: its tokenizer and val split")
    tasks: list[str] = Field(
        default_factory=lambda: ["ttt_cloze"], min_length=1, description="lm-eval task names"
    )
    task_dir: Path | None = Field(None, description="folder of lm-eval task YAML files")
    task_files: Path | None = Field(
        None, description="where ttt_cloze's documents and YAML go (None: a temporary folder)"
    )
    docs: int = Field(64, ge=1, description="ttt_cloze documents (one per val row)")
    seed: int = Field(0, ge=0, description="seeds ttt_cloze's choice of rows")
    batch_size: int = Field(8, ge=1, description="requests per forward pass")
    limit: int | None = Field(None, ge=1, description="documents per task (None: all)")


class LatencyConfig(ConfigModel):
    """Prefill throughput and per-token decode latency (batch 1) against context length."""

    contexts: list[PositiveInt] = Field(
        default_factory=lambda: [256, 1024, 4096, 8192], description="prompt lengths in tokens"
    )
    decode_tokens: int = Field(16, ge=1, description="timed single-token decode steps")
    warmup: int = Field(2, ge=0, description="untimed decode steps before timing")
    repeats: int = Field(3, ge=1, description="prefill timings per context (median)")
    decode_mode: DecodeMode | None = Field(
        None, description="TTT decode (online/chunked); None: the model config's"
    )
    seed: int = Field(0, ge=0, description="seeds the random prompts")

    @field_validator("contexts")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        return _strictly_increasing(v, "contexts")


class BenchConfig(ConfigModel):
    """Dual chunk form (one or several backends) vs anchored primal (vs online step, vs
    flash-linear-attention's TTT-Linear) on random inputs of one shape, timed interleaved.

    Shape fields left at None take the plan's shape on CUDA (B=16, H=64, d=128, b=16, T=256)
    and a reduced shape on CPU (B=2, H=8, d=64, b=16, T=256).
    """

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if any")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="input and state dtype")
    batch: int | None = Field(None, ge=1, description="batch B")
    heads: int | None = Field(None, ge=1, description="heads H")
    head_dim: int | None = Field(None, ge=1, description="head size d")
    chunk: int | None = Field(None, ge=1, description="TTT mini-batch b")
    seq_len: int | None = Field(None, ge=1, description="sequence length T")
    repeats: int = Field(5, ge=1, description="timed runs per op (median)")
    warmup: int = Field(1, ge=0, description="untimed runs per op first")
    ops: list[BenchOp] = Field(
        default_factory=lambda: ["dual", "primal_anchored", "online", "floor"],
        description="ops to time (floor: the dual form's chunk matmuls and nothing else)",
    )
    modes: list[BenchMode] = Field(
        default_factory=lambda: ["forward", "forward_backward"], description="passes to time"
    )
    backends: list[OpsBackend] = Field(
        default_factory=lambda: ["auto"],
        description="dual-form backends to time; the first is reported as op `dual`, the others "
        "as `dual_<backend>`",
    )
    compare_fla: bool = Field(
        False,
        description="also time flash-linear-attention's TTT-Linear at the same shape (its "
        "chunk_ttt_linear on CUDA, its naive reference on CPU); needs the `fla` package",
    )
    seed: int = Field(0, ge=0, description="seeds the random inputs")
    assert_speedup: float | None = Field(
        None, gt=0, description="fail when forward dual/primal speedup is below this"
    )

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        for name in ("ops", "modes", "backends"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be non-empty without repeats, got {values}")
        if "floor" in self.ops and "ops" in self.model_fields_set and "forward" not in self.modes:
            raise ValueError("the floor op is timed in the forward mode only: add it to modes")
        if "dual" not in self.ops and self.backends != ["auto"]:
            raise ValueError("backends choose the dual op's implementation: keep `dual` in ops")
        needs = {"dual", "primal_anchored"} - set(self.ops)
        if self.assert_speedup is not None and (needs or "forward" not in self.modes):
            raise ValueError(
                "assert_speedup compares forward dual vs primal_anchored: keep both ops and the "
                "forward mode"
            )
        return self


class GenerateConfig(ConfigModel):
    """Sampling settings of `generate` (as in `ttt_core.generate`; temperature 0 = greedy)."""

    max_new_tokens: int = Field(128, ge=1, description="tokens generated per turn")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy")
    top_k: int | None = Field(None, ge=1, description="sample among the k likeliest tokens")
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="sample within this probability mass (nucleus)"
    )
    seed: int | None = Field(None, description="sampling seed; None: not seeded")
    decode_mode: DecodeMode | None = Field(
        None, description="TTT decode (online/chunked); None: the model config's"
    )
