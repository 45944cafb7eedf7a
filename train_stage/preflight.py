"""Refusals before any work: every check that can fail fast runs here, and writes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError

from data_stage import DataStageError, ShardDataset, read_manifest, verify_shards
from data_stage.errors import validation_summary
from ttt_core.ops import resolve_backend

from .checkpoint import CHECKPOINTS, latest_checkpoint, read_meta
from .config import TrainConfig
from .distributed import resolve_device, world_from_env


class ConfigError(ValueError):
    """A run that cannot start; the message is one line saying what to change."""


def preflight(cfg: TrainConfig, world: int, local_rank: int = 0) -> Path | None:
    """Check config, data and resume target against each other. Returns the checkpoint to resume
    from (None for a fresh start)."""
    _check_runtime(cfg, world, local_rank)
    _check_data(cfg, world)
    return _resume_target(cfg)


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


def _check_data(cfg: TrainConfig, world: int) -> None:
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


def _resume_target(cfg: TrainConfig) -> Path | None:
    if cfg.resume == "never":
        if (cfg.run_dir / CHECKPOINTS / "latest").exists():
            raise ConfigError(
                f"{cfg.run_dir} already has checkpoints and --resume never was given; "
                "use --resume auto to continue it or choose a new --run-dir"
            )
        return None
    try:
        target = latest_checkpoint(cfg.run_dir) if cfg.resume == "auto" else Path(cfg.resume)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from e
    if target is None:
        return None
    if not (target / ".metadata").exists():
        raise ConfigError(f"--resume {target}: not a complete checkpoint directory")
    _check_same_run(cfg, target)
    return target


def _check_same_run(cfg: TrainConfig, target: Path) -> None:
    """Refuse a checkpoint of other weights (model identity); say which training settings
    changed (trajectory identity: the run goes on, but is no longer one uninterrupted run).
    Operational fields (cadences, checkpoint_n_chunks, strategy, ...) may change freely."""
    try:
        differences = cfg.identity_differences(read_meta(target)["config"])
    except ValidationError as e:
        raise ConfigError(
            f"checkpoint {target}: its recorded config is not valid in this version: "
            f"{validation_summary(e)}"
        ) from e
    model = sorted(name.removeprefix("model.") for name in differences if name.startswith("model."))
    if model:
        raise ConfigError(
            f"checkpoint {target} was trained with a different model config "
            f"(differs in {', '.join(model)}); resume with the same model or a new --run-dir"
        )
    if differences and world_from_env()[0] == 0:
        changed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (new, old) in differences.items())
        print(
            f"[train] warning: resuming {target.name} with changed training settings ({changed})",
            file=sys.stderr,
        )
