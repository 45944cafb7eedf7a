"""Thin Prefect tasks over the stage functions, cached on the content of what each one reads.

Each `*_key` function is the task's `cache_key_fn`: a digest of content fingerprints and the
stage's config, never of paths alone. Results are small JSON-able dicts, persisted under
`$PREFECT_HOME/storage`.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from data_stage import ShardConfig, TokenizerConfig, build_shards, train_tokenizer
from eval_stage import (
    BenchConfig,
    LongContextConfig,
    evaluate_bench_dual_primal,
    evaluate_long_context,
    open_model,
    publish,
    run_eval,
    write_long_context,
)
from flows.fingerprint import (
    corpus_fingerprint,
    digest,
    export_sha256,
    manifest_sha256,
    tokenizer_hash,
)
from flows.progress import TrainingProgress
from flows.slots import TRAIN_SLOTS, train_slot
from flows.torchrun import NOT_RETRYABLE, ProcessFailed, run_streaming
from flows.tracking import system_metrics
from flows.train_run import LAUNCH_FILE, prepare_launch, train_run_key
from train_stage import TrainConfig, TrainOutputs, export_model


# --- cache keys -------------------------------------------------------------------------------
def tokenizer_key(_context: Any, p: dict[str, Any]) -> str:
    cfg: TokenizerConfig = p["cfg"]
    return digest("tokenizer", corpus_fingerprint(cfg.corpus), cfg)


def shards_key(_context: Any, p: dict[str, Any]) -> str:
    cfg: ShardConfig = p["cfg"]
    settings = cfg.model_dump(mode="json", exclude={"workers"})  # output is worker-independent
    return digest("shards", corpus_fingerprint(cfg.corpus), tokenizer_hash(cfg.tokenizer), settings)


def train_key(_context: Any, p: dict[str, Any]) -> str:
    """The run's key plus `stop_at`: a result stopped early must not stand in for one that ran
    to the end, though both are the same run (which goes on from where it stopped)."""
    cfg: TrainConfig = p["cfg"]
    return digest(train_run_key(cfg, p["nproc"]), cfg.stop_at)


def bench_key(_context: Any, p: dict[str, Any]) -> str:
    return digest("bench", p["cfg"], torch.__version__, str(p["out_dir"]))


def eval_key(_context: Any, p: dict[str, Any]) -> str:
    cfg = p["cfg"]
    data = getattr(cfg, "data", None)
    baseline = p["baseline_dir"]
    return digest(
        "eval",
        p["name"],
        export_sha256(p["model_dir"]),
        export_sha256(baseline) if baseline else None,
        manifest_sha256(data) if data else None,
        cfg,
        str(p["out_dir"]),
    )


def long_context_key(_context: Any, p: dict[str, Any]) -> str:
    cfg = p["cfg"]
    exports = [export_sha256(d) for d in p["model_dirs"]]
    return digest("long_context", exports, manifest_sha256(cfg.data), cfg, str(p["out_dir"]))


# --- retry rule -------------------------------------------------------------------------------
def retry_unless_deterministic(_task: Any, _run: TaskRun, state: State) -> bool:
    """Retry a training failure unless the trainer refused (2) or diverged (3): those repeat."""
    error = state.data  # the exception the task raised
    return not (isinstance(error, ProcessFailed) and error.exit_code in NOT_RETRYABLE)


# --- tasks ------------------------------------------------------------------------------------
@task(name="train_tokenizer", cache_key_fn=tokenizer_key, persist_result=True)
def tokenizer_task(cfg: TokenizerConfig) -> dict[str, Any]:
    info = train_tokenizer(cfg)
    return {"dir": str(cfg.out), **json.loads(info.model_dump_json())}


@task(name="build_shards", cache_key_fn=shards_key, persist_result=True)
def shards_task(cfg: ShardConfig) -> dict[str, Any]:
    manifest = build_shards(cfg)
    counts = {
        f"{split}_{field}": getattr(manifest.split(split), field)
        for split in ("train", "val")
        for field in ("documents", "tokens", "rows")
    }
    return {"dir": str(cfg.out), "manifest_sha256": manifest_sha256(cfg.out), **counts}


@task(
    name="train",
    cache_key_fn=train_key,
    persist_result=True,
    retries=2,
    retry_condition_fn=retry_unless_deterministic,
)
def train_task(
    cfg: TrainConfig,
    nproc: int,
    mlflow: dict[str, str] | None,
    fresh: bool = False,
    grace_s: float = 60.0,
) -> dict[str, Any]:
    """torchrun + train_stage with `--resume auto`, so a retry continues from the latest
    checkpoint. A run dir trained for other content (or `fresh`) is moved aside first.
    `mlflow`: tracking_uri, experiment, run_name, parent_run_id of train_stage's nested run
    (with system metrics); None trains without MLflow. `grace_s`: how long stopping ranks get to
    save, and how long this launch waits for ranks left from a killed earlier one."""
    logger = get_run_logger()
    run_dir, run = cfg.run_dir, TrainOutputs(cfg.run_dir)
    command = prepare_launch(cfg, nproc, fresh, grace_s, logger.info, mlflow)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    monitor = (
        nullcontext()
        if mlflow is None
        else system_metrics(run.mlflow_run_id_file, mlflow["tracking_uri"])
    )
    logger.info("waiting for a %r slot", TRAIN_SLOTS)
    progress = TrainingProgress((mlflow or {}).get("run_name", str(run_dir)), logger.info)
    with train_slot(), monitor:
        run_streaming(
            command,
            progress,
            env=env,
            grace_s=grace_s,
            what="train_stage",
            launch_file=run_dir / LAUNCH_FILE,
        )
    return {"dir": str(run_dir), "mlflow_run_id": run.mlflow_run_id(), **run.summary()}


@task(name="export", cache_policy=NO_CACHE)
def export_task(run_dir: Path, out: Path) -> dict[str, Any]:
    """Consolidated weights of the latest checkpoint (seconds; rerun every time, replacing the
    previous export whole)."""
    path = export_model(run_dir, out, force=True)
    return {"dir": str(path), "sha256": export_sha256(path)}


@task(name="bench", cache_key_fn=bench_key, persist_result=True)
def bench_task(cfg: BenchConfig, out_dir: Path) -> dict[str, Any]:
    result = evaluate_bench_dual_primal(cfg)
    files = publish(result, out_dir)
    return {"files": [str(f) for f in files], "metrics": result.metrics}


@task(name="long_context", cache_key_fn=long_context_key, persist_result=True)
def long_context_task(
    model_dirs: list[Path], cfg: LongContextConfig, out_dir: Path
) -> dict[str, Any]:
    """`eval_stage long-context` over `model_dirs` (the first is the reference) into `out_dir`."""
    result = evaluate_long_context([open_model(d) for d in model_dirs], cfg)
    files = write_long_context(result, out_dir)
    return {"files": [str(f) for f in files], "reference": result.reference}


@task(name="evaluate", cache_key_fn=eval_key, persist_result=True)
def eval_task(
    name: str, model_dir: Path, cfg: Any, baseline_dir: Path | None, out_dir: Path
) -> dict[str, Any]:
    model = open_model(model_dir)
    baseline = open_model(baseline_dir) if baseline_dir else None
    result = run_eval(name, model, cfg, baseline)
    files = publish(result, out_dir)
    return {
        "files": [str(f) for f in files],
        "metrics": result.metrics,
        "step": model.info.get("step"),
    }
