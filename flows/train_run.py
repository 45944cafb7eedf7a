"""One training run's directory and launch command, shared by the `train` task and the sweep.

A run dir holds the run keyed in `.flow_cache_key`; a dir trained for another key is moved
aside, one trained for the same key is resumed (`--resume auto`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from flows.fingerprint import digest, manifest_sha256
from flows.torchrun import wait_for_previous_launch
from train_stage import TrainConfig, torchrun_command
from ttt_core import atomic_write_text

# The flow's own files in a training run dir: the cache key it trained for, the launch marker,
# and the config it hands train_stage (`--config`).
KEY_FILE, LAUNCH_FILE, TRAIN_CONFIG_FILE = ".flow_cache_key", ".launch", "train_config.yaml"


def train_run_key(cfg: TrainConfig, nproc: int) -> str:
    """What makes a training run the same run: the data's content, the config's identity
    (`TrainConfig.identity()`) and the world size (global batch, data partition). Operational
    fields (save/log/eval cadence, checkpoint_n_chunks, paths, MLflow) are not in it."""
    return digest("train", manifest_sha256(cfg.data), cfg.identity(), nproc)


def claim_run_dir(run_dir: Path, key: str, fresh: bool, log: Callable[[str], None]) -> None:
    """Make `run_dir` hold the run keyed `key`: a dir trained for another key (or any, when
    `fresh`) is moved to `<parent>/.replaced/`; one trained for this key stays, to resume."""
    key_file = run_dir / KEY_FILE
    stale = key_file.is_file() and key_file.read_text().strip() != key
    if run_dir.exists() and (fresh or stale):
        aside = run_dir.parent / ".replaced" / f"{run_dir.name}-{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), aside)
        log(f"moved the previous training run to {aside}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(key_file, key + "\n")


def prepare_launch(
    cfg: TrainConfig,
    nproc: int,
    fresh: bool,
    grace_s: float,
    log: Callable[[str], None],
    mlflow: dict[str, str] | None,
) -> list[str]:
    """Claim `cfg.run_dir` for this run (after any group left by a killed earlier launch has
    ended), write its `train_config.yaml` and return the torchrun command that trains it with
    `--resume auto`. `mlflow`: the `--mlflow-*` flag values; None trains without MLflow."""
    run_dir = cfg.run_dir
    wait_for_previous_launch(run_dir / LAUNCH_FILE, grace_s, log)  # before anything moves
    claim_run_dir(run_dir, train_run_key(cfg, nproc), fresh, log)
    config_path = run_dir / TRAIN_CONFIG_FILE
    atomic_write_text(config_path, cfg.to_yaml())
    args = ["--config", str(config_path), "--resume", "auto"]
    if mlflow is None:
        args.append("--no-mlflow")
    else:
        args += [f"--mlflow-{key.replace('_', '-')}={value}" for key, value in mlflow.items()]
    return torchrun_command(nproc, "train_stage", args)
