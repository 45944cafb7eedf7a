"""Refusals before any work: every check that can fail fast runs here, and writes nothing."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_stage import DataStageError, ShardDataset, read_manifest, verify_shards
from data_stage.manifest import MANIFEST_FILE
from ttt_core.files import sha256_file
from ttt_core.ops import resolve_backend
from ttt_core.validation import error_summary

from .checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    choose_checkpoint,
    read_meta,
    verify_checkpoint,
)
from .config import TrainConfig
from .distributed import resolve_device, world_from_env
from .init_from import InitSource, resolve_init_source, shape_mismatch
from .tracking import MetricsFile


class ConfigError(ValueError):
    """A run that cannot start; the message is one line saying what to change."""


@dataclass
class StartPlan:
    """What preflight decided: the checkpoint to resume from (None: a fresh start), the data's
    identity (recorded in each checkpoint), lines to tell the user (skipped checkpoints, an
    unverified one, a partial metrics line to drop), and for a fresh start with `--init-from`
    the weights to start from."""

    checkpoint: Path | None
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    init: InitSource | None = None


def preflight(cfg: TrainConfig, world: int, local_rank: int = 0) -> StartPlan:
    """Check config, data, resume target and run records against each other; writes nothing."""
    _check_runtime(cfg, world, local_rank)
    data = _check_data(cfg, world)
    plan = _resume_target(cfg, data)
    if plan.checkpoint is None and cfg.init_from is not None:
        plan.init = _init_source(cfg, plan.notes)
    try:
        note = MetricsFile(cfg.run_dir).check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if note:
        plan.notes.append(note)
    plan.notes.extend(_mixer_notes(cfg))
    return plan


def _init_source(cfg: TrainConfig, notes: list[str]) -> InitSource:
    """The checked `--init-from` source; refused when its parameters are not the model's."""
    try:
        source = resolve_init_source(cfg.init_from)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if mismatch := shape_mismatch(source.config, cfg.model):
        raise ConfigError(
            f"--init-from {cfg.init_from}: a model of another shape ({mismatch}); the new run's "
            "model must have the source's parameters"
        )
    changed = [
        f"{k} {v!r} -> {getattr(cfg.model, k)!r}"
        for k, v in source.config.model_dump().items()
        if v != getattr(cfg.model, k)
    ]
    at = f" (step {source.step})" if source.step is not None else ""
    notes.append(
        f"starting from the weights of {source.kind} {source.weights}{at}"
        + (f"; model changes: {', '.join(changed)}" if changed else "")
    )
    return source


def _mixer_notes(cfg: TrainConfig) -> list[str]:
    """Settings that run but defeat a mixer's purpose at this sequence length."""
    model, notes = cfg.model, []
    if "lact" in model.mixers and model.lact_chunk_size >= cfg.seq_len:
        notes.append(
            f"warning: model.lact_chunk_size ({model.lact_chunk_size}) >= seq_len "
            f"({cfg.seq_len}): LaCT's fast weights never update inside a training sequence "
            "(set --model.lact-chunk-size below seq_len)"
        )
    if model.e2e_suffix_layers and model.e2e_chunk_size >= cfg.seq_len:
        notes.append(
            f"warning: model.e2e_chunk_size ({model.e2e_chunk_size}) >= seq_len "
            f"({cfg.seq_len}): TTT-E2E takes no inner step inside a training sequence, so its "
            "prime MLPs are never meta-learned (set --model.e2e-chunk-size below seq_len)"
        )
    return notes


def _check_runtime(cfg: TrainConfig, world: int, local_rank: int) -> None:
    try:
        device = resolve_device(cfg.device, local_rank)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.precision == "bf16" and device.type != "cuda":
        raise ConfigError(
            "--precision bf16 needs CUDA (bf16 autocast); on CPU use --precision fp32"
        )
    model = cfg.model
    try:
        resolve_backend(model.ops_backend, device, model.head_dim, model.chunk_size)
    except ValueError as e:
        raise ConfigError(f"model.ops_backend: {e}") from e
    if cfg.strategy == "none" and world > 1:
        raise ConfigError(
            f"--strategy none trains in one process but WORLD_SIZE={world}; "
            "use --strategy fsdp under torchrun"
        )


def _check_data(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The data's identity ({train_rows, manifest_sha256}) once every check has passed."""
    try:
        manifest = read_manifest(cfg.data)
        if cfg.verify_data:
            problems = verify_shards(cfg.data)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise ConfigError(f"data directory fails verification: {problems[0]}{more}")
        train_rows = len(ShardDataset(cfg.data, "train"))
    except DataStageError as e:
        raise ConfigError(f"data directory {cfg.data} is unusable: {e}") from e
    if cfg.max_seq_len > manifest.seq_len:
        raise ConfigError(
            f"seq_len {cfg.max_seq_len} is longer than the shards' {manifest.seq_len}; "
            f"rebuild shards with --seq-len {cfg.max_seq_len} or train shorter"
        )
    if cfg.model.vocab_size != manifest.tokenizer.vocab_size:
        raise ConfigError(
            f"model vocab_size {cfg.model.vocab_size} does not match the shards' tokenizer "
            f"({manifest.tokenizer.vocab_size} ids, hash {manifest.tokenizer.hash[:12]}); "
            f"pass --vocab-size {manifest.tokenizer.vocab_size} or use matching data"
        )
    needed = world * cfg.max_batch_size
    if train_rows < needed:
        raise ConfigError(
            f"the train split has {train_rows} rows; one step needs {needed} "
            "(world x batch size): build more data or lower --batch-size"
        )
    return {"train_rows": train_rows, "manifest_sha256": sha256_file(cfg.data / MANIFEST_FILE)}


def _resume_target(cfg: TrainConfig, data: dict[str, Any]) -> StartPlan:
    if cfg.resume == "never":
        if _has_checkpoints(cfg.run_dir):
            raise ConfigError(
                f"{cfg.run_dir} already has checkpoints and --resume never was given; "
                "use --resume auto to continue it or choose a new --run-dir"
            )
        return StartPlan(None, data)
    try:
        if cfg.resume == "auto":
            choice = choose_checkpoint(cfg.run_dir)
            target, verified, notes = choice.checkpoint, choice.verified, choice.notes
        else:
            target, notes = Path(cfg.resume), []
            verified = verify_checkpoint(target)
    except CheckpointError as e:
        flag = "--resume auto" if cfg.resume == "auto" else "--resume"
        raise ConfigError(f"{flag}: {e}") from e
    if target is None:
        return StartPlan(None, data, notes)
    if not verified:
        notes.append(f"{target} has no checksums (saved by an older train_stage): unverified")
    _check_compatible(cfg, target, data)
    return StartPlan(target, data, notes)


def _has_checkpoints(run_dir: Path) -> bool:
    root = run_dir / CHECKPOINTS
    return (root / "latest").exists() or any(root.glob("step_*"))


def _check_compatible(cfg: TrainConfig, target: Path, data: dict[str, Any]) -> None:
    """Refuse a checkpoint of other weights (model identity), another seed or other data (the
    run would not continue the same sample order); say which other training settings changed
    (trajectory identity: the run goes on, but is no longer one uninterrupted run). Operational
    fields (cadences, checkpoint_n_chunks, ops_backend, strategy, ...) may change freely."""
    meta = read_meta(target)
    try:
        differences = cfg.identity_differences(meta["config"])
    except ValidationError as e:
        raise ConfigError(
            f"checkpoint {target}: its recorded config is not valid in this version: "
            f"{error_summary(e)}"
        ) from e
    model = sorted(name.removeprefix("model.") for name in differences if name.startswith("model."))
    if model:
        raise ConfigError(
            f"checkpoint {target} was trained with a different model config "
            f"(differs in {', '.join(model)}); resume with the same model or a new --run-dir"
        )
    if "seed" in differences:
        raise ConfigError(
            f"checkpoint {target} was trained with --seed {differences['seed'][1]}, not "
            f"{cfg.seed}; resume with the same seed or a new --run-dir"
        )
    recorded = meta.get("data")  # absent in checkpoints of older versions
    if recorded and recorded != data:
        raise ConfigError(
            f"checkpoint {target} was trained on other data ({recorded['train_rows']} train rows, "
            f"manifest {recorded['manifest_sha256'][:12]}; --data {cfg.data} has "
            f"{data['train_rows']}, {data['manifest_sha256'][:12]}); resume with the same "
            "--data or a new --run-dir"
        )
    if differences and world_from_env()[0] == 0:
        changed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (new, old) in differences.items())
        print(
            f"[train] warning: resuming {target.name} with changed training settings ({changed})",
            file=sys.stderr,
        )
