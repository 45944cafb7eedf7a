"""Export a run's checkpoint as a standalone model directory, and load a run's latest weights.

An export is a `TTTLM.save_pretrained` directory (`config.json`, `model.safetensors`) plus
`tokenizer/` (the shards' tokenizer, copied by data_stage) and `export.json` (step, tokens seen,
source checkpoint), all listed in its `checksums.json` and committed with one rename: a kill at
any moment leaves the previous export or the new one, whole. It loads with
`TTTLM.from_pretrained` (and `eval_stage.open_model`), without this package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed.checkpoint as dcp

from data_stage import copy_tokenizer, load_tokenizer, read_manifest
from ttt_core import TTTLM, ModelConfig
from ttt_core.files import atomic_directory, recover_directory
from ttt_core.pretrained import INFO_FILE, TOKENIZER_DIR, has_pretrained_files, write_pretrained

from .checkpoint import latest_checkpoint, read_meta
from .config import TrainConfig
from .outputs import CONFIG_FILE, SUMMARY_FILE


class RunModel(NamedTuple):
    """The latest weights of a run directory, with where its tokenizer and weights came from."""

    model: TTTLM
    tokenizer_dir: Path | None  # None when the run's shard directory no longer has one
    info: dict[str, Any]  # step, tokens_seen, source (the checkpoint), run_dir, mlflow_run_id


def load_checkpoint_weights(checkpoint: Path, config: ModelConfig) -> TTTLM:
    """A plain (unsharded) TTTLM with the weights of a DCP checkpoint, in one process."""
    model = TTTLM(config)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=Path(checkpoint))
    model.load_state_dict(state["model"])
    return model


def _run_checkpoint(run_dir: Path) -> tuple[TrainConfig, Path]:
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a train_stage run directory?")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: the run has no checkpoint yet (checkpoints/latest)")
    return TrainConfig.from_yaml(config_path), checkpoint


def _provenance(run_dir: Path, checkpoint: Path, config: TrainConfig) -> dict[str, Any]:
    meta = read_meta(checkpoint)
    return {
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "seq_len": config.max_seq_len,
        "source_checkpoint": str(checkpoint.resolve()),
        "run_dir": str(run_dir.resolve()),
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "train_tokens_per_s": _summary_throughput(run_dir, meta["step"]),
    }


def _summary_throughput(run_dir: Path, step: int) -> float | None:
    """The training tokens/s the run's summary records, when it summarizes this very step."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary.get("tokens_per_s") if summary.get("steps") == step else None


def _overlap(out: Path, inputs: dict[str, Path]) -> str | None:
    """Why `out` may not be written: it is, contains or lies inside one of `inputs`."""
    out = out.resolve()
    for name, path in inputs.items():
        path = path.resolve()
        if out == path:
            return f"it is the {name} ({path})"
        if path in out.parents:
            return f"it is inside the {name} ({path})"
        if out in path.parents:
            return f"it contains the {name} ({path})"
    return None


def export_model(
    run_dir: Path, out: Path, checkpoint: Path | None = None, *, force: bool = False
) -> Path:
    """Write the export of `checkpoint` (default: the run's latest) to `out`, atomically.

    Refused before anything is written (FileNotFoundError / FileExistsError / ValueError, one
    line naming the path): a missing run, checkpoint, shard manifest or tokenizer; an `out` that
    is, contains or lies inside the run dir, the checkpoint, the shard dir or the tokenizer; an
    existing export unless `force` (which replaces it whole, the old one kept until the new one
    is complete); an existing `out` that is not an export, even with `force`.
    """
    run_dir, out = Path(run_dir), Path(out)
    config, latest = _run_checkpoint(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else latest
    if not (checkpoint / ".metadata").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a complete checkpoint (no .metadata)")
    manifest = read_manifest(config.data)
    tokenizer_src = config.data / manifest.tokenizer.dir
    inputs = {
        "run directory": run_dir,
        "checkpoint": checkpoint,
        "shard directory": config.data,
        "tokenizer": tokenizer_src,
    }
    if reason := _overlap(out, inputs):
        raise ValueError(f"--out {out}: {reason}; export somewhere else")
    recover_directory(out)  # what a killed earlier export left
    if out.exists():
        if out.is_dir() and any(out.iterdir()) and not has_pretrained_files(out):
            raise FileExistsError(f"--out {out}: exists and is not an export; choose another")
        if not force:
            raise FileExistsError(f"--out {out}: already exists; pass --force to replace it")
    tokenizer = load_tokenizer(tokenizer_src)  # before any work: a missing one is an error
    expected = manifest.tokenizer.hash
    if tokenizer.hash != expected:
        raise ValueError(
            f"{tokenizer_src}: sha256 {tokenizer.hash[:12]} is not the tokenizer the shards were "
            f"built with ({expected[:12]})"
        )
    model = load_checkpoint_weights(checkpoint, config.model)
    return save_export(model, out, tokenizer_src, _provenance(run_dir, checkpoint, config), force)


def save_export(
    model: TTTLM, out: Path, tokenizer_dir: Path, info: dict[str, Any], force: bool = False
) -> Path:
    """Write `model` (unsharded, any source), a copy of `tokenizer_dir` and `info` as the export
    directory `out`, in one atomic commit with checksums (`atomic_directory`)."""
    with atomic_directory(Path(out), replace=force) as tmp:
        write_pretrained(model, tmp)
        copy_tokenizer(tokenizer_dir, tmp / TOKENIZER_DIR)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return Path(out)


def load_run_model(run_dir: Path | str, device: str | torch.device = "cpu") -> RunModel:
    """The latest checkpoint of a run directory as a plain TTTLM in eval mode on `device`."""
    run_dir = Path(run_dir)
    config, checkpoint = _run_checkpoint(run_dir)
    model = load_checkpoint_weights(checkpoint, config.model).to(device).eval()
    meta = read_meta(checkpoint)
    info = {
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "source": str(checkpoint),
        "run_dir": str(run_dir),
        "mlflow_run_id": meta.get("mlflow_run_id"),
    }
    try:
        tokenizer_dir: Path | None = config.data / read_manifest(config.data).tokenizer.dir
    except ValueError:  # the shards moved or were removed: evals that need ids say so
        tokenizer_dir = None
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        tokenizer_dir = None
    return RunModel(model=model, tokenizer_dir=tokenizer_dir, info=info)
