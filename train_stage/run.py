"""One training run end to end: refuse early, set up, resume, train, record."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from stage_common.run_lock import RunDirLock
from ttt_core.files import atomic_write_text

from .checkpoint import clean_stale_temps, repoint_latest
from .config import TrainConfig
from .distributed import DistEnv, init_distributed, shutdown_distributed, world_from_env
from .outputs import CONFIG_FILE
from .preflight import StartPlan, preflight
from .tracking import MlflowTracker
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted

EXIT_DIVERGED, EXIT_INTERRUPTED = 3, 143


def open_tracker(cfg: TrainConfig, env: DistEnv) -> MlflowTracker | None:
    """Rank 0 only; an unreachable MLflow is a warning and the run goes on without it."""
    if not (env.is_main and cfg.mlflow.enabled):
        return None
    try:
        return MlflowTracker(cfg, cfg.run_dir)
    except Exception as e:
        warnings.warn(f"MLflow unavailable, logging to metrics.jsonl only: {e}", stacklevel=2)
        return None


def run_training(cfg: TrainConfig) -> int:
    """Train per `cfg` in this process (one rank of torchrun, or alone). Returns an exit code;
    raises `ConfigError` (nothing written) when the run cannot start.

    Order: take the run dir's lock (rank 0), remove what an interrupted earlier run left, check
    everything (preflight, then loading the resume state), and only then write: config.yaml,
    the repaired metrics.jsonl, checkpoints."""
    rank, world, local_rank = world_from_env()
    lock = RunDirLock(cfg.run_dir, "train_stage").acquire() if rank == 0 else None
    try:
        if lock:
            for stale in clean_stale_temps(cfg.run_dir):
                print(f"[train] removed {stale}, left by an interrupted run", file=sys.stderr)
        return _train(cfg, preflight(cfg, world, local_rank))
    finally:
        if lock:  # config.yaml is the first write: without it, a new run dir goes away again
            lock.release(undo=not (cfg.run_dir / CONFIG_FILE).exists())


def _train(cfg: TrainConfig, plan: StartPlan) -> int:
    env = init_distributed(cfg.device)
    tracker = None
    clean = False
    try:
        trainer = Trainer(cfg, env, plan.data, plan.init)
        seconds = trainer.resume(plan.checkpoint) if plan.checkpoint is not None else 0.0
        # Every check has passed: from here on the run writes into its directory.
        for note in plan.notes:
            _say(env, f"[train] {note}", err=True)
        if env.is_main:
            atomic_write_text(cfg.run_dir / CONFIG_FILE, cfg.to_yaml())
            trainer.metrics.truncate_after(trainer.step)
            if plan.checkpoint is not None and repoint_latest(cfg.run_dir, plan.checkpoint):
                print(f"[train] latest now names {plan.checkpoint.name}", file=sys.stderr)
            print(
                f"[train] resolved config (also in {cfg.run_dir / 'config.yaml'}):\n"
                f"{cfg.to_yaml()}",
                flush=True,
            )
        if plan.checkpoint is not None:
            _say(
                env,
                f"[train] resumed from {plan.checkpoint} (step {trainer.step}, "
                f"loaded in {seconds:.2f}s)",
            )
        tracker = open_tracker(cfg, env)
        if tracker:
            tracker.set_tag("run_dir", str(cfg.run_dir.resolve()))
            _say(env, f"[train] MLflow run {tracker.run_id} at {tracker.uri}")
        summary = trainer.run(tracker)
        _finish(tracker, "FINISHED")
        _say(env, f"[train] done: {_describe(summary, cfg.eval_batches)}")
        clean = True
        return 0
    except TrainingDiverged as e:
        _finish(tracker, "FAILED")
        _say(env, f"[train] diverged: {e}", err=True)
        return EXIT_DIVERGED
    except TrainingInterrupted as e:
        _finish(tracker, "KILLED")
        _say(env, f"[train] {e}", err=True)
        return EXIT_INTERRUPTED
    except BaseException:
        _finish(tracker, "FAILED")
        raise
    finally:
        shutdown_distributed(clean)


def _finish(tracker: MlflowTracker | None, status: str) -> None:
    if tracker:
        tracker.finish(status)


def _say(env: DistEnv, message: str, err: bool = False) -> None:
    if env.is_main:
        print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _describe(summary: dict[str, Any], eval_batches: int) -> str:
    """One line; a run resumed at its last step trained nothing new, so it has no final loss.
    The val loss here is the trainer's estimate on `eval_batches` batches (the evals measure
    the whole val split), and says so."""
    parts = [f"{summary['steps']} steps", f"{summary['tokens_seen']:,} tokens"]
    if summary["final_loss"] is not None:
        parts.append(f"final loss {summary['final_loss']:.4f}")
    if summary["val_loss"] is not None:
        parts.append(f"val loss {summary['val_loss']:.4f} ({eval_batches} val batches)")
    return ", ".join([*parts, f"checkpoint {summary['checkpoint']}"])
