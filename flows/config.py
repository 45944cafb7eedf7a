"""`PipelineConfig`: one bring-up (tokenizer → shards → train → bench → eval), validated up front.

Named presets (`PipelineConfig.from_preset("small_cpu", train={"steps": 50})`) pair a data recipe
with the train preset of the same name. Every stage config is derived from this one object, so
the flow, the stage CLIs and the cache keys all see the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from data_stage import CorpusConfig, ShardConfig, TokenizerConfig
from eval_stage import EVALS, STANDARD_EVALS, BenchConfig, LatencyConfig, LongContextConfig
from train_stage import TrainConfig
from ttt_core import ConfigModel, Family, ModelConfig, deep_merge, error_summary, family_settings

DATA_STAGES = ("tokenizer", "shards", "extend_shards")
# The evals a bring-up can run: eval_stage's standard ones (a field of this config each).
EvalName = Literal[STANDARD_EVALS]  # type: ignore[valid-type]
ALL_EVALS: tuple[str, ...] = STANDARD_EVALS
# Those reading the shards: their fields hold the config without `data` (the run's shards).
DATA_EVALS: dict[str, type[BaseModel]] = {
    name: EVALS[name].config for name in STANDARD_EVALS if EVALS[name].reads_data
}


def default_mlflow_uri(run_root: Path) -> str:
    """The run root's own MLflow store, when none is given."""
    return f"sqlite:///{Path(run_root).expanduser().resolve()}/mlflow.db"


class PipelineConfig(ConfigModel):
    """Everything one bring-up needs. `train` is merged into `TrainConfig.preset_dict(train_preset,
    mixer)` (the preset's tuned values for the mixer);
    `perplexity`/`position_loss`/`niah` are the eval configs without their `data` field."""

    preset: str | None = None
    name: str = Field("bringup", min_length=1, description="MLflow experiment")
    run_root: Path = Path("runs")
    run_name: str | None = Field(
        None, description="None: '<preset>-<mixer>' (a hybrid: its `mixer_name`)"
    )
    mixer: Family = Field(
        "ttt_linear", description="the model's mixer, or e2e (swa with TTT-E2E suffix blocks)"
    )
    baseline: str | None = Field(
        None, description="run_name of a completed attention bring-up under run_root to compare"
    )
    controls: list[Family] = Field(
        default_factory=list,
        description="mixers brought up beside this one on its data and budget, then compared "
        "(`none`: the no-context control; `attention`, `swa`, `lact`, `ttt_linear`, `e2e`), "
        "each with the preset's tuned values for it; the bring-up's own mixer is skipped",
    )
    data_from: Path | None = Field(
        None,
        description="a bring-up directory whose tokenizer and shards this one reads instead of "
        "building its own (how controls share their model's data)",
    )
    corpus: CorpusConfig = Field(default_factory=lambda: CorpusConfig(format="stdlib"))
    vocab_size: int = Field(8192, gt=4)
    tokenizer_model_type: Literal["bpe", "unigram"] = "bpe"
    tokenizer_seed: int = Field(0, ge=0)
    seq_len: int = Field(128, ge=2, description="shard row length (tokens predicted per row)")
    val_fraction: float = Field(0.05, gt=0.0, le=0.5)
    train_preset: str = "small_cpu"
    train: dict[str, Any] = Field(default_factory=dict)
    nproc: int = Field(1, ge=1, le=64, description="torchrun processes; fsdp when > 1")
    train_retries: int = Field(2, ge=0, le=10)
    stop_grace_s: float = Field(
        60.0, gt=0, description="seconds a stopping trainer gets to save before SIGKILL"
    )
    bench: BenchConfig = Field(default_factory=lambda: BenchConfig(device="cpu"))
    evals: list[EvalName] = Field(default_factory=lambda: list(ALL_EVALS))
    perplexity: dict[str, Any] = Field(default_factory=dict)
    position_loss: dict[str, Any] = Field(default_factory=dict)
    niah: dict[str, Any] = Field(default_factory=dict)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    extend_seq_len: int | None = Field(
        None,
        ge=2,
        description="context extension: after training at seq_len, train on at this longer "
        "length from the trained weights (shards of this row length built from the same "
        "tokenizer), then evaluate the extended model too",
    )
    extend: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig overrides of the extension run (steps, batch_size, lr, "
        "model.rope_theta...); its seq_len, data and init_from are set by the bring-up",
    )
    long_context: dict[str, Any] | None = Field(
        None,
        description="LongContextConfig fields without `data`: the long-context eval over this "
        "model (the reference) and its controls, extended ones when extend_seq_len is set; None: "
        "not run",
    )
    max_restarts: int = Field(2, ge=0)
    mlflow_tracking_uri: str | None = Field(
        None, description="None: sqlite:///<run_root>/mlflow.db"
    )

    @model_validator(mode="after")
    def _resolve(self) -> PipelineConfig:
        root = self.run_root.expanduser().resolve()
        object.__setattr__(self, "run_root", root)
        if self.run_name is None:
            mixer = ModelConfig.model_validate(self._train_dict()["model"]).mixer_name
            object.__setattr__(self, "run_name", f"{self.preset or 'custom'}-{mixer}")
        if "/" in self.run_name or self.run_name.startswith("."):
            raise ValueError(f"run_name {self.run_name!r} must be a plain folder name")
        if self.mlflow_tracking_uri is None:
            object.__setattr__(self, "mlflow_tracking_uri", default_mlflow_uri(root))
        if len(set(self.controls)) != len(self.controls):
            raise ValueError(f"controls has repeats: {self.controls}")
        if self.mixer in self.controls:  # a model is not its own control (small_cpu, mixer=none)
            object.__setattr__(self, "controls", [m for m in self.controls if m != self.mixer])
        if self.data_from is not None:
            object.__setattr__(self, "data_from", self.data_from.expanduser().resolve())
        if len(set(self.evals)) != len(self.evals):
            raise ValueError(f"evals has repeats: {self.evals}")
        for field, kind in DATA_EVALS.items():
            try:
                kind.model_validate({**getattr(self, field), "data": "."})
            except ValidationError as e:
                raise ValueError(error_summary(e, at=field)) from e
        self._check_extension()
        train = self.train_config(Path("."))
        if train.model.vocab_size != self.vocab_size:
            raise ValueError(
                f"vocab_size={self.vocab_size} but the train model has vocab_size="
                f"{train.model.vocab_size}; set train.model.vocab_size or vocab_size to match"
            )
        if train.max_seq_len > self.seq_len:
            raise ValueError(
                f"train seq_len {train.max_seq_len} is longer than the shard rows (seq_len="
                f"{self.seq_len}); lower train.seq_len or raise seq_len"
            )
        return self

    def _check_extension(self) -> None:
        if self.extend and self.extend_seq_len is None:
            raise ValueError("extend sets the extension run's training; set extend_seq_len too")
        if self.extend_seq_len is not None:
            trained = self.train_config(Path(".")).max_seq_len
            if self.extend_seq_len <= trained:
                raise ValueError(
                    f"extend_seq_len {self.extend_seq_len} must be longer than the training "
                    f"length {trained}"
                )
            for key in ("seq_len", "data", "init_from", "run_dir", "curriculum"):
                if key in self.extend:
                    raise ValueError(f"extend.{key} is set by the bring-up; drop it")
            self.extend_train_config()  # every extend override validated now
        if self.long_context is not None:
            try:
                LongContextConfig.model_validate({**self.long_context, "data": "."})
            except ValidationError as e:
                raise ValueError(error_summary(e, at="long_context")) from e

    @classmethod
    def from_preset(cls, preset: str, /, **overrides: Any) -> PipelineConfig:
        """The named preset with `overrides` deep-merged in (nested dicts key by key). `preset`
        is positional-only: `name` (the MLflow experiment) is an override like any other."""
        if preset not in PIPELINE_PRESETS:
            raise ValueError(
                f"unknown pipeline preset {preset!r}; choose one of {sorted(PIPELINE_PRESETS)}"
            )
        merged = deep_merge({"preset": preset, **PIPELINE_PRESETS[preset]}, overrides)
        return cls.model_validate(merged)

    # --- layout of one bring-up: <run_root>/<run_name>/... ---
    @property
    def run_dir(self) -> Path:
        return self.run_root / str(self.run_name)

    def stage_dir(self, stage: str) -> Path:
        """`tokenizer`, `shards`, `train`, `export`, `bench`, `eval` or `compare` under the run
        dir; the data stages under `data_from` when it is set."""
        if stage in DATA_STAGES and self.data_from is not None:
            return self.data_from / stage
        return self.run_dir / stage

    def control_config(self, mixer: Family) -> PipelineConfig:
        """The bring-up of control `mixer`: this one's data (`data_from`), steps, extension and
        evals, the preset's settings for that mixer, under `<run_dir>/controls/<mixer>`; a hybrid's
        `layer_mixers` is not carried over (the control is one mixer throughout)."""
        data = self.model_dump(exclude={"run_name", "controls", "baseline"})
        train = deep_merge(self.train, {"model": {"layer_mixers": None}})
        return PipelineConfig.model_validate(
            {
                **data,
                "mixer": mixer,
                "train": train,
                "run_root": self.run_dir / "controls",
                "run_name": mixer,
                "data_from": self.data_from or self.run_dir,
                "long_context": None,  # the bring-up's comparison, not each control's
            }
        )

    # --- stage configs ---
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(
            corpus=self.corpus,
            out=self.stage_dir("tokenizer"),
            vocab_size=self.vocab_size,
            model_type=self.tokenizer_model_type,
            seed=self.tokenizer_seed,
        )

    def shard_config(self) -> ShardConfig:
        return ShardConfig(
            corpus=self.corpus,
            tokenizer=self.stage_dir("tokenizer"),
            seq_len=self.seq_len,
            out=self.stage_dir("shards"),
            val_fraction=self.val_fraction,
        )

    def _train_dict(self) -> dict[str, Any]:
        """The train preset with its tuned values for `mixer`, then `train` and `mixer` merged
        in, as plain data (so a value set in `train` wins over the tuned one). A hybrid stack
        (`train.model.layer_mixers` naming several mixers) gets no mixer's tuned values."""
        layers = set(dict(self.train.get("model") or {}).get("layer_mixers") or [self.mixer])
        tuned_for = layers.pop() if len(layers) == 1 else None
        preset = TrainConfig.preset_dict(self.train_preset, tuned_for)
        merged = deep_merge(preset, self.train)
        return deep_merge(merged, {"model": family_settings(self.mixer, merged["model"])})

    def train_config(self, data: Path | None = None) -> TrainConfig:
        """The resolved TrainConfig (MLflow settings are passed as flags by the train task)."""
        fixed = {
            "data": str(data if data is not None else self.stage_dir("shards")),
            "run_dir": str(self.stage_dir("train")),
            "strategy": "fsdp" if self.nproc > 1 else "none",
        }
        return TrainConfig.model_validate(deep_merge(self._train_dict(), fixed))

    def eval_config(self, name: EvalName, *, extended: bool = False) -> BaseModel:
        """Eval `name` as configured, on the run's shards (the extension's with `extended`)."""
        if name not in DATA_EVALS:  # a full config of its own (latency)
            return getattr(self, name)
        data = self.stage_dir("extend_shards" if extended else "shards")
        return DATA_EVALS[name].model_validate({**getattr(self, name), "data": data})

    # --- context extension and the long-context eval ---
    def extend_shard_config(self) -> ShardConfig:
        """The shards at `extend_seq_len`, from the run's tokenizer and corpus."""
        return self.shard_config().model_copy(
            update={"seq_len": self.extend_seq_len, "out": self.stage_dir("extend_shards")}
        )

    def extend_train_config(self) -> TrainConfig:
        """The extension run: the model's training config with `extend` merged in, at
        `extend_seq_len` on the extension shards, starting from the trained run's weights
        (fresh optimizer and schedule), in `extend_train/`."""
        if self.extend_seq_len is None:
            raise ValueError("no extension configured (extend_seq_len is None)")
        train = deep_merge(self._train_dict(), {"curriculum": []})
        fixed = {
            "seq_len": self.extend_seq_len,
            "data": str(self.stage_dir("extend_shards")),
            "run_dir": str(self.stage_dir("extend_train")),
            "init_from": str(self.stage_dir("train")),
            "strategy": "fsdp" if self.nproc > 1 else "none",
        }
        return TrainConfig.model_validate(deep_merge(deep_merge(train, self.extend), fixed))

    def long_context_config(self) -> LongContextConfig:
        """The long-context eval, on the extension's shards when extending (else the run's)."""
        if self.long_context is None:
            raise ValueError("no long-context eval configured (long_context is None)")
        shards = "extend_shards" if self.extend_seq_len is not None else "shards"
        return LongContextConfig.model_validate(
            {**self.long_context, "data": self.stage_dir(shards)}
        )


PIPELINE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per stage: the end-to-end tests and `python -m flows run --preset debug_tiny`.
    "debug_tiny": dict(
        corpus={"format": "stdlib", "max_bytes": 1_000_000},
        vocab_size=512,
        seq_len=64,
        train_preset="debug_tiny",
        bench={
            "device": "cpu",
            "batch": 1,
            "heads": 2,
            "head_dim": 16,
            "chunk": 8,
            "seq_len": 32,
            "repeats": 2,
        },
        perplexity={"batch_size": 8, "max_batches": None},  # the whole val split
        position_loss={"multipliers": [1, 2], "sequences": 8, "n_buckets": 8},
        niah={"contexts": [96, 128], "depths": [0.0, 1.0], "trials": 2, "digits": 3},
        latency={"contexts": [32, 64], "decode_tokens": 4, "repeats": 1, "warmup": 1},
    ),
    # Minutes on 2 CPU cores: the whole embedded corpus, the ~7M-parameter model.
    "small_cpu": dict(
        corpus={"format": "stdlib"},
        vocab_size=8192,
        seq_len=256,
        train_preset="small_cpu",
        controls=["none"],
        bench={
            "device": "cpu",
            "batch": 2,
            "heads": 8,
            "head_dim": 64,
            "chunk": 16,
            "seq_len": 128,
            "repeats": 3,
        },
        # the whole val split (1,349 rows here: its first 128 are ~1 nat easier than the rest)
        perplexity={"batch_size": 8, "max_batches": None},
        # Sequences: enough for bands narrower than the early fall of the curve (measured,
        # docs/eval_stage.md). NIAH scaled to a 7M model trained on 128-token rows: contexts up
        # to 2x that, a 3-digit key ranked among 10 candidates (chance 0.1).
        position_loss={"multipliers": [1, 2, 4], "sequences": 64, "n_buckets": 16},
        niah={
            "contexts": [64, 128, 256],
            "depths": [0.0, 0.5, 1.0],
            "trials": 4,
            "digits": 3,
            "batch_size": 10,
        },
        latency={"contexts": [128, 512, 2048], "decode_tokens": 8, "repeats": 2},
    ),
    # The long-context comparison at CPU scale (`python -m flows long-context`): every family at
    # small_cpu's shape and tuned values, pretrained at 256 and extended to 1024, then compared
    # at 256-2048 against attention (the bring-up's own model). Sized to finish 2 seeds in
    # under 30 minutes on 2 cores (docs/long_context.md has the measured time).
    "long_context_cpu": dict(
        corpus={"format": "stdlib"},
        vocab_size=8192,
        seq_len=256,
        train_preset="small_cpu",
        train={"steps": 50},
        mixer="attention",
        controls=["ttt_linear", "none", "swa", "lact", "e2e"],
        evals=["perplexity"],
        perplexity={"batch_size": 4, "max_batches": 8},
        extend_seq_len=1024,
        extend={"steps": 10, "batch_size": 2},
        long_context={
            "lengths": [256, 512, 1024, 2048],
            "sequences": 12,
            "niah_trials": 2,
            "batch_size": 4,
        },
    ),
}
