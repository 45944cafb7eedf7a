"""The models an eval runs on: loaded from an export (a `TTTLM.save_pretrained` directory, the
tokenizer beside it) or a run directory, or built from a preset with random weights (latency only
needs shapes). Also where results go by default."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from data_stage import SentencePieceTokenizer, load_tokenizer
from stage_common.mlflow_models import MlflowFetchError, fetch_export, is_mlflow_uri
from ttt_core import TTTLM, ModelConfig
from ttt_core.pretrained import TOKENIZER_DIR, has_pretrained_files, is_pretrained, read_info

from .errors import EvalInputError
from .results import ModelInfo, Role

PRESET_PREFIX = "preset:"


@dataclass
class LoadedModel:
    """A model ready for evaluation (eval mode) with its tokenizer and where it came from."""

    model: TTTLM
    config: ModelConfig
    tokenizer: SentencePieceTokenizer | None
    info: dict[str, Any] = field(default_factory=dict)  # step, tokens_seen, source, run_dir


def load_export(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """An export directory: checksums verified, weights on `device`, its tokenizer if it has one."""
    model = TTTLM.from_pretrained(path, device=device)
    tokenizer_dir = path / TOKENIZER_DIR
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    info = {**read_info(path), "source": str(path)}
    return LoadedModel(model=model, config=model.config, tokenizer=tokenizer, info=info)


def load_run(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The latest checkpoint of a train_stage run directory. The trainer's checkpoint layout is
    train_stage's to read, so it is imported here, on this path only."""
    from train_stage import load_run_model

    run = load_run_model(path, device=device)
    tokenizer = load_tokenizer(run.tokenizer_dir) if run.tokenizer_dir else None
    return LoadedModel(model=run.model, config=run.model.config, tokenizer=tokenizer, info=run.info)


def open_model(path: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """An export (`load_export`), a run directory (`load_run`) or an MLflow URI of an export
    (`models:/NAME@champion`: fetched into a temporary directory, so an alias is resolved on
    every call), in eval mode on `device`; a bad path, a missing or damaged file, as
    `EvalInputError` naming it."""
    if is_mlflow_uri(str(path)):
        with tempfile.TemporaryDirectory(prefix="ttt-eval-model-") as tmp:
            try:
                export = fetch_export(str(path), Path(tmp))
            except MlflowFetchError as e:
                raise EvalInputError(str(e)) from e
            loaded = open_model(export, device)  # held in memory: the files can go
        loaded.info["source"] = str(path)
        return loaded
    path = Path(path)
    if not path.is_dir():
        raise EvalInputError(
            f"{path}: no such model directory; pass an export (`python -m train_stage export`) "
            "or a train_stage run directory"
        )
    try:
        return load_export(path, device) if has_pretrained_files(path) else load_run(path, device)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise EvalInputError(f"cannot load model {path}: {e}") from e


def preset_models(
    preset: str, device: torch.device | str = "cpu", seed: int = 0
) -> tuple[LoadedModel, LoadedModel]:
    """(TTT-Linear, attention baseline) of the named `ModelConfig` preset, random weights from
    `seed` (the same seed for both), in eval mode; no tokenizer."""
    try:
        ttt_config = ModelConfig.from_preset(preset, mixer="ttt_linear")
    except ValueError as e:
        raise EvalInputError(str(e)) from e
    models = []
    for config in (ttt_config, ttt_config.model_copy(update={"mixer": "attention"})):
        torch.manual_seed(seed)
        model = TTTLM(config).to(device).eval()
        info = {"source": f"{PRESET_PREFIX}{preset}", "random_init_seed": seed}
        models.append(LoadedModel(model=model, config=config, tokenizer=None, info=info))
    return models[0], models[1]


def model_info(loaded: LoadedModel, role: Role) -> ModelInfo:
    """The result's description of `loaded` (where it came from, step, size)."""
    info = loaded.info
    return ModelInfo(
        role=role,
        source=str(info.get("source", "<in memory>")),
        run_dir=info.get("run_dir"),
        mlflow_run_id=info.get("mlflow_run_id"),
        step=info.get("step"),
        tokens_seen=info.get("tokens_seen"),
        train_tokens_per_s=info.get("train_tokens_per_s"),
        mixer=loaded.config.mixer_name,
        num_params=loaded.config.num_params(),
        config=loaded.config.model_dump(mode="json"),
    )


def default_out_dir(loaded: LoadedModel) -> Path | None:
    """Next to the weights: `<export>/eval/`, or `<run_dir>/eval/<checkpoint name>/` for a run
    directory (one folder per evaluated step). None for a preset or in-memory model."""
    source = loaded.info.get("source")
    if source is None or str(source).startswith(PRESET_PREFIX):
        return None
    source = Path(source)
    if is_pretrained(source):
        return source / "eval"
    run_dir = loaded.info.get("run_dir")
    return Path(run_dir) / "eval" / source.name if run_dir else None


def roles(model: LoadedModel, baseline: LoadedModel | None) -> list[tuple[Role, LoadedModel]]:
    """[("model", model)] plus ("baseline", baseline) when one is given."""
    pairs: list[tuple[Role, LoadedModel]] = [("model", model)]
    if baseline is not None:
        pairs.append(("baseline", baseline))
    return pairs
