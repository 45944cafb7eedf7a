"""The on-disk format of a `TTTLM` (`TTTLM.save_pretrained` / `TTTLM.from_pretrained`).

A pretrained directory holds `config.json` (`{"model_type", "format_version", "model":
ModelConfig}`; `model_type` is what transformers' `AutoConfig` dispatches on, see `ttt_core.hf`),
`model.safetensors` (every weight, full and unsharded; with tied embeddings only `embed.weight`)
and `checksums.json` (sha256 of every file in the directory, see `ttt_core.files`). An exporter
may add, in the same commit and covered by the same checksums, `tokenizer/` (the tokenizer the
model was trained with, written by its owner, data_stage) and `export.json` (provenance: step,
tokens seen, source); this module names them but does not interpret them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from .config import ModelConfig
from .files import CHECKSUMS_FILE, IntegrityError, directory_digest
from .validation import error_summary

FORMAT_VERSION = 1
MODEL_TYPE = "ttt_linear"  # transformers' name for this format (`ttt_core.hf.TTTLinearConfig`)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FILES = (CONFIG_FILE, WEIGHTS_FILE, CHECKSUMS_FILE)
TOKENIZER_DIR = "tokenizer"
INFO_FILE = "export.json"
# The config name of exports written before this format (no checksums): refused with a hint.
LEGACY_CONFIG_FILE = "model_config.json"
REEXPORT_HINT = "re-export it: `python -m train_stage export --run-dir RUN --out DIR --force`"


def is_pretrained(directory: Path | str) -> bool:
    """Every file of the format is present (a cheap check; loading verifies the bytes)."""
    return all((Path(directory) / name).is_file() for name in FILES)


class PretrainedOutputs:
    """A directory in this format, as the output of a stage (an export): its files, whether
    they are all there, and a digest that changes when any file in it does."""

    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.files = [self.dir / name for name in FILES]  # config, weights, checksums
        self.tokenizer_dir = self.dir / TOKENIZER_DIR  # an exporter's copy (data_stage format)
        self.info_file = self.dir / INFO_FILE  # an exporter's provenance (`read_info`)

    def complete(self) -> bool:
        """Every file of the format is present (loading verifies their checksums)."""
        return is_pretrained(self.dir)

    def digest(self) -> str:
        """sha256 of its checksums.json: changes when any file in the directory does."""
        return directory_digest(self.dir)


def has_pretrained_files(directory: Path | str) -> bool:
    """Any file of the format (or of the legacy export) is present: the directory is meant to
    be a saved model, so loading it should say what is wrong rather than look elsewhere."""
    return any((Path(directory) / name).exists() for name in (*FILES, LEGACY_CONFIG_FILE))


def write_pretrained(model: nn.Module, directory: Path) -> None:
    """Write `config.json` and `model.safetensors` of `model` (a `TTTLM`) into the existing
    `directory`. Not atomic by itself: call it inside `ttt_core.files.atomic_directory`, which
    also writes the checksums."""
    from safetensors.torch import save_file

    config: ModelConfig = model.config
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        weights.pop("lm_head.weight")  # the same tensor as embed.weight; safetensors refuses both
    save_file(weights, str(Path(directory) / WEIGHTS_FILE))
    text = json.dumps(
        {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "model": config.model_dump(mode="json"),
        },
        indent=2,
    )
    (Path(directory) / CONFIG_FILE).write_text(text + "\n")


def refuse_legacy(directory: Path) -> None:
    """An export written before this format (no config.json, no checksums) gets the command
    that rewrites it, rather than a complaint about a missing checksums.json."""
    if not (directory / CONFIG_FILE).exists() and (directory / LEGACY_CONFIG_FILE).is_file():
        raise IntegrityError(
            f"{directory}: an export in the old format ({LEGACY_CONFIG_FILE}, no checksums); "
            + REEXPORT_HINT
        )


def read_config(directory: Path) -> ModelConfig:
    """The `ModelConfig` in `config.json`, with a one-line error naming the file when it is
    missing, of another format version or invalid."""
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise IntegrityError(f"{path}: missing; not a saved TTTLM directory") from e
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: unreadable ({e})") from e
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"{path}: format_version {version!r}, this ttt_core reads {FORMAT_VERSION}; "
            + REEXPORT_HINT
        )
    try:
        return ModelConfig.model_validate(data.get("model"))
    except ValidationError as e:
        raise IntegrityError(f"{path}: invalid model config: {error_summary(e)}") from e


def read_weights(directory: Path, device: torch.device | str) -> dict[str, Any]:
    """The tensors of `model.safetensors`, loaded straight onto `device`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as e:
        raise IntegrityError(f"{path}: cannot read the weights ({e})") from e


def read_info(directory: Path) -> dict[str, Any]:
    """The provenance in `export.json` ({} when the directory has none)."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: unreadable ({e})") from e
    if not isinstance(info, dict):
        raise IntegrityError(f"{path}: not a JSON object")
    return info
