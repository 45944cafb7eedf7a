"""Refusals before any work: every check that can fail fast runs here, and writes nothing."""

from __future__ import annotations

from pathlib import Path

from data_stage import DataStageError, ShardDataset, read_manifest, verify_shards
from ttt_core import ModelConfig

from .checkpoint import CHECKPOINTS, latest_checkpoint, read_meta
from .config import TrainConfig
from .distributed import resolve_device


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
    # Validated again, a checkpoint from before a field was added holds that field's default.
    saved = ModelConfig.model_validate(read_meta(target)["config"]["model"]).model_dump(mode="json")
    ours = cfg.model.model_dump(mode="json")
    if saved != ours:
        differing = sorted(k for k in saved.keys() | ours.keys() if saved.get(k) != ours.get(k))
        raise ConfigError(
            f"checkpoint {target} was trained with a different model config "
            f"(differs in {', '.join(differing)}); resume with the same model or a new --run-dir"
        )
    return target
