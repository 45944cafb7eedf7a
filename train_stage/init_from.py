"""`--init-from`: a new run that starts from another model's weights (context extension).

The source is an export (`python -m train_stage export`, checked against its checksums) or a
train_stage run directory (its newest intact checkpoint, as export reads it). Only the weights
are taken: the optimizer, schedule, step count, data order and RNG start fresh, so the new run
may train at another `seq_len` or curriculum and with another `rope_theta`, chunk or window.
A source whose parameters have other names or shapes than the new model's is refused, naming
the model fields that differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp

from ttt_core import TTTLM, IntegrityError, ModelConfig, is_pretrained, verify_checksums
from ttt_core.pretrained import has_pretrained_files, read_config, read_info, read_weights

from .checkpoint import CheckpointError, latest_checkpoint, read_meta
from .config import TrainConfig
from .outputs import CONFIG_FILE


@dataclass(frozen=True)
class InitSource:
    """Where the starting weights come from: `weights` is the export directory or the
    checkpoint directory, `config` the model they were trained as."""

    kind: Literal["export", "checkpoint"]
    weights: Path
    config: ModelConfig
    step: int | None  # the source's optimizer step (None: an export that does not say)

    def record(self) -> dict[str, Any]:
        """What the new run records about its start (summary, MLflow)."""
        return {"kind": self.kind, "path": str(self.weights.resolve()), "step": self.step}


def resolve_init_source(path: Path) -> InitSource:
    """The source `path` names, checked (checksums, an intact checkpoint); ValueError with one
    line naming the path otherwise. Reads metadata only, no weights."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"--init-from {path}: no such directory")
    try:
        if has_pretrained_files(path):
            if not is_pretrained(path):
                raise ValueError(f"--init-from {path}: an incomplete export; export it again")
            verify_checksums(path)
            return InitSource("export", path, read_config(path), read_info(path).get("step"))
        if (path / CONFIG_FILE).is_file():
            checkpoint = latest_checkpoint(path)
            if checkpoint is None:
                raise ValueError(f"--init-from {path}: the run has no checkpoint yet")
            config = TrainConfig.from_yaml(path / CONFIG_FILE).model
            return InitSource("checkpoint", checkpoint, config, read_meta(checkpoint)["step"])
    except (IntegrityError, CheckpointError) as e:
        raise ValueError(f"--init-from {path}: {e}") from e
    raise ValueError(
        f"--init-from {path}: neither an export (config.json + checksums.json) nor a "
        "train_stage run directory (config.yaml + checkpoints/)"
    )


def _parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = TTTLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def shape_mismatch(source: ModelConfig, target: ModelConfig) -> str | None:
    """None when `target` has exactly `source`'s parameter names and shapes; else the model
    fields that differ, as 'field: source vs target' joined by ', '."""
    if _parameter_shapes(source) == _parameter_shapes(target):
        return None
    mine, theirs = source.model_dump(), target.model_dump()
    fields = [f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
    return ", ".join(fields) or "the parameters differ"


def load_init_weights(model: TTTLM, source: InitSource) -> None:
    """Fill the (unsharded) `model` with the source's weights, in every process alike."""
    if source.kind == "export":
        model.load_state_dict(read_weights(source.weights, "cpu"))
        return
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=source.weights, no_dist=True)  # every rank reads it whole
    model.load_state_dict(state["model"])
