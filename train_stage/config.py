"""`TrainConfig`: everything one training run needs, validated before any work starts.

Named presets (`TrainConfig.from_preset("small_cpu", data=..., run_dir=...)`) pair a model preset
with a recipe that fits it. The resolved config is written to `<run_dir>/config.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from ttt_core import ModelConfig, family_of, family_settings
from ttt_core.dotted import deep_merge
from ttt_core.identity import IdentityConfig
from ttt_core.validation import ConfigModel

SUPPORTED_STRATEGIES = ("none", "fsdp")


class CurriculumStage(ConfigModel):
    """One stage of a length curriculum; lr and batch size default to the run's."""

    seq_len: int = Field(ge=2)
    steps: int = Field(ge=1)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)


class MlflowConfig(ConfigModel):
    enabled: bool = Field(default=True, description="Log to MLflow (metrics.jsonl is always kept).")
    tracking_uri: str | None = Field(
        default=None,
        description="None: $MLFLOW_TRACKING_URI, else a SQLite store under the run dir's parent.",
    )
    experiment: str = Field(default="ttt-bringup", description="MLflow experiment name.")
    run_name: str | None = Field(default=None, description="None: the run dir's name.")
    parent_run_id: str | None = Field(default=None, description="Nest the run under this one.")
    flush_every: int = Field(default=10, ge=1, description="Metric batches are sent every N steps.")


class TrainConfig(IdentityConfig):
    """One training run. `steps` counts optimizer steps (each of `grad_accum` micro-batches of
    `batch_size` rows per rank). With a curriculum, `steps` is derived from its stages.

    Identity (`identity()`) is what decides the training trajectory (with the data's content
    and the world size, which live outside this config); operational fields decide where the
    run lives, how it is watched and saved, and on what it runs."""

    IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "model",  # its own identity only: checkpoint_n_chunks/decode_mode are operational
            # the schedule spans `steps`; batch, length, optimizer and seed pick every update
            "steps",
            "batch_size",
            "grad_accum",
            "seq_len",
            "lr",
            "min_lr_ratio",
            "warmup_steps",
            "weight_decay",
            "betas",
            "grad_clip",
            "seed",
            "curriculum",
            # whether a mixer sees across the packed documents of a row
            "documents",
            # TTT-E2E's inner-lr warm-up: the inner steps every update trains through
            "e2e_inner_lr_warmup",
            "e2e_inner_lr_init",
            # the weights at step 0 (the model's own init when None)
            "init_from",
            # bf16 autocast changes the numbers the weights are made of
            "precision",
        }
    )
    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            # a label; what it expands to is in the fields above
            "preset",
            # paths: the data's content is identified by its manifest (flows keys on its
            # sha256, preflight checks the vocabulary), the run dir is where the run lives
            "data",
            "run_dir",
            # where this invocation ends, not where the schedule ends
            "stop_at",
            # the same data-parallel math sharded differently; checkpoints reshard across them
            "strategy",
            # where it runs (precision is the numeric choice)
            "device",
            # how to start: continue, refuse to, or from which checkpoint
            "resume",
            # saving, evaluation and logging cadences: they read the state, never change it
            # (evaluation reads fixed validation rows and draws no random numbers)
            "save_every",
            "keep_last",
            "eval_every",
            "eval_batches",
            "log_every",
            "stats_every",
            "verify_data",
            "mlflow",
        }
    )

    preset: str | None = Field(default=None, description="The recipe this config came from.")
    model: ModelConfig
    data: Path = Field(description="Shard directory (data_stage output).")
    run_dir: Path = Field(description="Where checkpoints, metrics and config.yaml are written.")
    steps: int = Field(default=100, ge=1, description="Optimizer steps the schedule spans.")
    stop_at: int | None = Field(
        default=None,
        ge=1,
        description="End this invocation after this step (checkpoint saved); the schedule "
        "still spans `steps`. For time-boxed jobs: resume later with --resume auto.",
    )
    batch_size: int = Field(default=8, ge=1, description="Rows per rank per micro-step.")
    grad_accum: int = Field(default=1, ge=1, description="Micro-steps per optimizer step.")
    seq_len: int = Field(default=128, ge=2, description="Tokens predicted per row.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="The cosine decays to this fraction of the peak."
    )
    warmup_steps: int = Field(default=10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW decay of the matrices.")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping.")
    strategy: str = Field(
        default="none", description="none (one process or replicas) | fsdp (classic FSDP)."
    )
    documents: Literal["packed", "isolated"] = Field(
        default="packed",
        description="packed: a row's documents (BOS-delimited) are one sequence to every mixer; "
        "isolated: each document is its own sequence (no attention, fast-weight state or chunk "
        "crosses a BOS; ttt_core.documents).",
    )
    e2e_inner_lr_warmup: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="TTT-E2E: fraction of `steps` over which the inner lr rises from "
        "e2e_inner_lr_init x e2e_inner_lr to e2e_inner_lr (the reference: 10%).",
    )
    e2e_inner_lr_init: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="TTT-E2E: the inner lr multiplier at step 0 (the reference: 0.1).",
    )
    init_from: Path | None = Field(
        default=None,
        description="Start from the weights of an export or a run directory (its newest "
        "checkpoint), with a fresh optimizer, schedule and data order: context extension "
        "(any seq_len, curriculum or rope_theta; the parameter shapes must match).",
    )
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: bfloat16 autocast (needs CUDA)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA if any.")
    resume: str = Field(default="auto", description="auto | never | path to a checkpoint dir")
    save_every: int = Field(default=50, ge=0, description="0: only at the end.")
    keep_last: int = Field(default=3, ge=1, description="Checkpoints kept on disk.")
    eval_every: int = Field(default=0, ge=0, description="0: only at the end.")
    eval_batches: int = Field(default=4, ge=1, description="Val batches per evaluation.")
    log_every: int = Field(default=1, ge=1, description="Metrics cadence in steps.")
    stats_every: int = Field(default=10, ge=0, description="Fast-weight stats cadence; 0 = off.")
    verify_data: bool = Field(default=True, description="sha256 every shard before training.")
    seed: int = Field(default=0, ge=0, description="Seeds the init and the data order.")
    curriculum: list[CurriculumStage] = Field(
        default_factory=list, description="Length stages, run in order; sets `steps`."
    )
    mlflow: MlflowConfig = MlflowConfig()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in SUPPORTED_STRATEGIES:
            raise ValueError(
                f"strategy {value!r} is not supported; supported: 'none' (one process or "
                "data-parallel replicas) and 'fsdp' (classic FullyShardedDataParallel). "
                "fsdp2 and deepspeed are not implemented"
            )
        return value

    @field_validator("resume")
    @classmethod
    def _known_resume(cls, value: str) -> str:
        if value not in ("auto", "never") and not value.strip():
            raise ValueError("resume must be 'auto', 'never' or a checkpoint path")
        return value

    @model_validator(mode="before")
    @classmethod
    def _derive_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("curriculum"):
            total = sum(int(dict(stage)["steps"]) for stage in data["curriculum"])
            if "steps" in data and data["steps"] is not None and int(data["steps"]) != total:
                raise ValueError(
                    f"steps={data['steps']} disagrees with the curriculum's {total} steps; "
                    "give one or the other"
                )
            data = {**data, "steps": total}
        return data

    @model_validator(mode="after")
    def _e2e_fields_need_e2e(self) -> TrainConfig:
        # a recorded config carries every field, so only a value off its default is a setting
        warm_up = ("e2e_inner_lr_warmup", "e2e_inner_lr_init")
        given = [f for f in warm_up if getattr(self, f) != type(self).model_fields[f].default]
        if given and not self.model.e2e_suffix_layers:
            raise ValueError(
                f"{', '.join(given)}: TTT-E2E settings, but the model has no e2e_suffix_layers"
            )
        if self.documents == "isolated" and self.model.e2e_suffix_layers:
            raise ValueError(
                "documents='isolated' is not implemented for TTT-E2E (e2e_suffix_layers > 0): "
                "its prime MLPs train across the whole row; use documents='packed'"
            )
        return self

    def inner_lr_scale(self, step: int) -> float:
        """TTT-E2E's inner-lr multiplier at optimizer step `step` (0-based): linear from
        e2e_inner_lr_init at step 0 to 1 at the end of the warm-up; 1 without TTT-E2E."""
        warm = round(self.e2e_inner_lr_warmup * self.steps)
        if not self.model.e2e_suffix_layers or warm == 0:
            return 1.0
        progress = min(1.0, (step + 1) / warm)
        return self.e2e_inner_lr_init + (1.0 - self.e2e_inner_lr_init) * progress

    @property
    def stages(self) -> list[CurriculumStage]:
        """The curriculum, or the whole run as one stage."""
        return self.curriculum or [CurriculumStage(seq_len=self.seq_len, steps=self.steps)]

    def stage_at(self, step: int) -> tuple[int, CurriculumStage]:
        """(stage index, stage) in force at optimizer step `step` (0-based)."""
        stages = self.stages
        end = 0
        for index, stage in enumerate(stages):
            end += stage.steps
            if step < end:
                return index, stage
        return len(stages) - 1, stages[-1]

    def stage_lr(self, stage: CurriculumStage) -> float:
        return stage.lr if stage.lr is not None else self.lr

    def stage_batch_size(self, stage: CurriculumStage) -> int:
        return stage.batch_size if stage.batch_size is not None else self.batch_size

    @property
    def max_seq_len(self) -> int:
        return max(s.seq_len for s in self.stages)

    @property
    def max_batch_size(self) -> int:
        return max(self.stage_batch_size(s) for s in self.stages)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path | str) -> TrainConfig:
        with open(path) as f:
            return cls.model_validate(yaml.safe_load(f))

    @classmethod
    def preset_dict(cls, name: str, mixer: str | None = None) -> dict[str, Any]:
        """The named recipe as plain data, its model preset expanded. With `mixer` (a family: a
        mixer or `e2e`, `ttt_core.config.family_settings`), the model is of that family and the
        recipe's `tuned[family]` values (measured per family, see docs/tuning.md) are merged
        in; callers merge explicit settings on top, so theirs win."""
        if name not in TRAIN_PRESETS:
            raise ValueError(
                f"unknown train preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}"
            )
        recipe = dict(TRAIN_PRESETS[name])
        tuned = recipe.pop("tuned", {})
        model = ModelConfig.from_preset(recipe.pop("model_preset")).model_dump(mode="json")
        if mixer is not None:
            model.update(family_settings(mixer, model))
        tuned_values = tuned.get(family_of(model), {})
        return deep_merge({"preset": name, **recipe, "model": model}, tuned_values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe with `overrides` merged in (`model` and `mlflow` as partial dicts); the
        recipe's tuned values for the mixer of `overrides` (else of the preset) apply first."""
        mixer = family_of(dict(overrides.get("model") or {}))
        return cls.model_validate(deep_merge(cls.preset_dict(name, mixer), overrides))


# A recipe's `tuned` maps a mixer to the values measured best for it on this recipe (a partial
# recipe: `lr`, `model.eta_base`, ...); `TrainConfig.preset_dict(name, mixer)` applies them.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "debug_tiny": dict(
        model_preset="debug_tiny",
        steps=20,
        batch_size=4,
        seq_len=32,
        lr=3e-3,
        warmup_steps=2,
        save_every=10,
        stats_every=5,
        # not measured (this recipe checks plumbing, not quality): shapes that let TTT-E2E take
        # its inner steps inside the 32-token rows (chunk 8) at this width
        tuned={"e2e": {"model": {"window_size": 16, "e2e_chunk_size": 8, "e2e_prime_hidden": 88}}},
    ),
    "small_cpu": dict(
        model_preset="small_cpu",
        steps=200,
        batch_size=8,
        seq_len=256,
        lr=3e-3,
        warmup_steps=20,
        save_every=50,
        eval_every=100,
        # the best point per mixer of the sweeps in docs/tuning.md (`python -m flows sweep`,
        # this recipe on the embedded corpus); every one is inside its grid
        tuned={
            "ttt_linear": {"lr": 3e-3, "model": {"eta_base": 0.01, "chunk_size": 16}},
            "attention": {"lr": 1e-3},
            "none": {"lr": 3e-3},
            # chunk and window 64 (4 of each per 256-token row), 2 fast-weight heads of 128 as
            # in the lact_small_cpu model preset; the sweeps ran at these
            "lact": {
                "lr": 3e-3,
                "model": {
                    "lact_base_lr": 3e-4,
                    "lact_chunk_size": 64,
                    "window_size": 64,
                    "lact_heads": 2,
                },
            },
            "swa": {"lr": 1e-3, "model": {"window_size": 64}},
            # the e2e_small_cpu model preset's shape (swa's window, one suffix block, chunk 32:
            # 8 per row as the reference's 1024 in 8192); the sweeps ran at these. Inner lr
            # 0.1, not the reference's 1.0 (0.32 nats worse here, docs/tuning.md)
            "e2e": {
                "lr": 3e-3,
                "model": {
                    "e2e_inner_lr": 0.1,
                    "window_size": 64,
                    "mlp_hidden": 616,
                    "e2e_suffix_layers": 1,
                    "e2e_chunk_size": 32,
                    "e2e_prime_hidden": 352,
                },
            },
        },
    ),
    "bringup_125m": dict(
        model_preset="bringup_125m",
        steps=20000,
        batch_size=16,
        seq_len=2048,
        lr=3e-3,
        warmup_steps=1000,
        save_every=1000,
        eval_every=1000,
        precision="bf16",
        strategy="fsdp",
    ),
    "bringup_1p3b": dict(
        model_preset="bringup_1p3b",
        steps=50000,
        batch_size=8,
        seq_len=2048,
        lr=1e-3,
        warmup_steps=2000,
        save_every=1000,
        eval_every=2000,
        precision="bf16",
        strategy="fsdp",
    ),
}
