"""The model a server serves: an export directory, or one fetched from MLflow first.

An MLflow URI (`runs:/`, `models:/NAME@ALIAS`, `mlflow-artifacts:/`; a bare export or the
MLflow model a bring-up registers) is downloaded once into `<state-dir>/models/<sha of the
URI>/` (`stage_common.mlflow_models`), then loaded like a local export: weights checked against their checksums, the tokenizer beside them
required, the chat template read (`chat_template.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data_stage import DataStageError, SentencePieceTokenizer, load_tokenizer
from stage_common.mlflow_models import MlflowFetchError, fetch_export, is_mlflow_uri
from ttt_core import TTTLM
from ttt_core.pretrained import TOKENIZER_DIR, has_pretrained_files

from .chat_template import ChatTemplate, load_chat_template
from .errors import ServeInputError

MODELS_DIR = "models"


@dataclass
class ServedModel:
    model: TTTLM
    tokenizer: SentencePieceTokenizer
    template: ChatTemplate
    directory: Path  # the export directory read (the download, for an MLflow URI)
    name: str


def fetch_from_mlflow(uri: str, state_dir: Path) -> Path:
    """The export behind `uri`, downloaded into the state directory unless it is there."""
    try:
        return fetch_export(uri, Path(state_dir) / MODELS_DIR)
    except MlflowFetchError as e:
        raise ServeInputError(str(e)) from e


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ServeInputError("--device cuda: no CUDA device is visible")
    return torch.device(device)


def check_export_dir(directory: Path) -> None:
    """An export's files are where they should be (their bytes are checked on load)."""
    if not directory.is_dir():
        raise ServeInputError(f"{directory}: no such export directory")
    if not has_pretrained_files(directory):
        raise ServeInputError(
            f"{directory}: not an export (no config.json and model.safetensors); make one with "
            "`python -m train_stage export --run-dir RUN --out DIR`"
        )
    if not (directory / TOKENIZER_DIR).is_dir():
        raise ServeInputError(f"{directory}: no tokenizer/ beside the weights; re-export it")


def load_served_model(
    model: str, state_dir: Path, device: torch.device, name: str | None = None
) -> ServedModel:
    """The export `model` names (a path or an MLflow URI), in eval mode on `device`."""
    directory = fetch_from_mlflow(model, state_dir) if is_mlflow_uri(model) else Path(model)
    check_export_dir(directory)
    tokenizer_dir = directory / TOKENIZER_DIR
    try:
        lm = TTTLM.from_pretrained(directory, device=device).eval()
        tokenizer = load_tokenizer(tokenizer_dir)
    except (OSError, ValueError, DataStageError) as e:
        raise ServeInputError(f"cannot load {directory}: {e}") from e
    if tokenizer.vocab_size > lm.config.vocab_size:
        raise ServeInputError(f"{directory}: tokenizer has {tokenizer.vocab_size} ids, the model "
                              f"{lm.config.vocab_size}")  # fmt: skip
    served_name = name or (model if is_mlflow_uri(model) else directory.resolve().name)
    return ServedModel(lm, tokenizer, load_chat_template(directory), directory, served_name)
