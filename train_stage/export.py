"""Consolidated model export, and loading a model from an export or a run directory.

An export directory holds `model.safetensors` (the full, unsharded weights), `model_config.json`
(the `ModelConfig`), `tokenizer/` (a copy of the tokenizer the data was built with) and
`export.json` (step, tokens seen, source checkpoint). It loads without torch.distributed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from data_stage import SentencePieceTokenizer, load_tokenizer
from ttt_core import TTTLM, ModelConfig

from .checkpoint import atomic_write_text, latest_checkpoint, read_meta
from .config import TrainConfig

EXPORT_FORMAT_VERSION = 1
WEIGHTS, MODEL_CONFIG, EXPORT_INFO, TOKENIZER_DIR = (
    "model.safetensors",
    "model_config.json",
    "export.json",
    "tokenizer",
)


@dataclass
class LoadedModel:
    """A model ready for evaluation (eval mode) with its tokenizer and where it came from."""

    model: TTTLM
    config: ModelConfig
    tokenizer: SentencePieceTokenizer | None
    info: dict[str, Any] = field(default_factory=dict)  # step, tokens_seen, source, run_dir


def load_checkpoint_weights(checkpoint: Path, config: ModelConfig) -> TTTLM:
    """A plain (unsharded) TTTLM with the weights of a DCP checkpoint, in one process."""
    model = TTTLM(config)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=Path(checkpoint))
    model.load_state_dict(state["model"])
    return model


def _run_checkpoint(run_dir: Path) -> tuple[TrainConfig, Path]:
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a train_stage run directory?")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: the run has no checkpoint yet (checkpoints/latest)")
    return TrainConfig.from_yaml(config_path), checkpoint


def save_export(model: TTTLM, out: Path, tokenizer_dir: Path | None, info: dict[str, Any]) -> Path:
    """Write `model` (unsharded, any source) as an export directory; `info` goes to export.json
    next to the format version (step, tokens_seen, seq_len, source_checkpoint, ...)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight")  # the same tensor as embed.weight
    save_file(weights, str(out / WEIGHTS))
    atomic_write_text(out / MODEL_CONFIG, model.config.model_dump_json(indent=2))
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
        shutil.copytree(tokenizer_dir, out / TOKENIZER_DIR)
    atomic_write_text(
        out / EXPORT_INFO, json.dumps({"format_version": EXPORT_FORMAT_VERSION, **info}, indent=2)
    )
    return out


def export_model(run_dir: Path, out: Path, checkpoint: Path | None = None) -> Path:
    """Write the export of `checkpoint` (default: the run's latest) to `out`."""
    run_dir = Path(run_dir)
    config, latest = _run_checkpoint(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else latest
    model = load_checkpoint_weights(checkpoint, config.model)
    meta = read_meta(checkpoint)
    info = {
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "seq_len": config.max_seq_len,
        "source_checkpoint": str(checkpoint.resolve()),
        "run_dir": str(run_dir.resolve()),
        "mlflow_run_id": meta.get("mlflow_run_id"),
    }
    return save_export(model, out, config.data / TOKENIZER_DIR, info)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an export directory, or the latest checkpoint of a run directory, in eval mode."""
    path = Path(path)
    if (path / EXPORT_INFO).exists():
        info = json.loads((path / EXPORT_INFO).read_text())
        if info.get("format_version") != EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"{path}: export format {info.get('format_version')} is not "
                f"{EXPORT_FORMAT_VERSION}; re-export with `python -m train_stage export`"
            )
        config = ModelConfig.model_validate_json((path / MODEL_CONFIG).read_text())
        from safetensors.torch import load_file

        model = TTTLM(config)
        missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
        allowed_missing = {"lm_head.weight"} if config.tie_embeddings else set()
        if set(missing) - allowed_missing or unexpected:
            raise ValueError(
                f"{path / WEIGHTS}: weights do not fit the config "
                f"(missing {missing}, unexpected {unexpected})"
            )
        tokenizer_dir = path / TOKENIZER_DIR
        info["source"] = str(path)
    elif (path / "config.yaml").exists():
        train_config, checkpoint = _run_checkpoint(path)
        config = train_config.model
        model = load_checkpoint_weights(checkpoint, config)
        tokenizer_dir = train_config.data / TOKENIZER_DIR
        meta = read_meta(checkpoint)
        info = {
            "step": meta["step"],
            "tokens_seen": meta["tokens_seen"],
            "source": str(checkpoint),
            "run_dir": str(path),
            "mlflow_run_id": meta.get("mlflow_run_id"),
        }
    else:
        raise FileNotFoundError(
            f"{path}: neither an export (export.json) nor a run directory (config.yaml)"
        )
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    return LoadedModel(model=model.to(device).eval(), config=config, tokenizer=tokenizer, info=info)
