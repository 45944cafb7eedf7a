"""The training loop: model, optimizer, data order and checkpoints as one resumable state.

Every piece of state (model, optimizer, LR schedule, data order, RNGs, step and tokens seen)
goes into each checkpoint, so a run resumed from step N continues exactly as if it had never
stopped: the same batches, the same losses, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ttt_core import TTTLM
from ttt_core.files import atomic_write_text

from .checkpoint import Checkpointer, read_meta
from .config import TrainConfig
from .data import TrainData
from .distributed import DistEnv, all_reduce_mean, clip_gradients, wrap_model
from .init_from import InitSource, load_init_weights
from .optim import build_optimizer, build_scheduler, decay_names
from .outputs import SUMMARY_FILE
from .preflight import ConfigError
from .progress import Progress
from .tracking import MetricsFile, MlflowTracker


class TrainingDiverged(RuntimeError):
    """The loss or a fast-weight statistic became NaN/inf; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint of the current step was saved before stopping."""


def seed_everything(seed: int) -> None:
    """Identical on every rank, before the model is built: the replicas start equal."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        data_identity: dict[str, Any],
        init: InitSource | None = None,
    ):
        """`init`: start from those weights instead of the seeded initialisation (which still
        runs first, so every later random draw is the one a run without `init` makes)."""
        self.cfg, self.env = cfg, env
        self.data_identity = data_identity  # recorded in each checkpoint, checked on resume
        seed_everything(cfg.seed)
        model = TTTLM(cfg.model)
        if init is not None:
            load_init_weights(model, init)
        decaying = decay_names(model)
        self.model = wrap_model(model, cfg.strategy, env)
        self.optimizer = build_optimizer(self.model, decaying, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.data = TrainData(cfg, env)
        self.checkpointer = Checkpointer(cfg.run_dir, cfg.keep_last)
        self.metrics = MetricsFile(cfg.run_dir)
        self.step_throughput: list[float] = []  # tokens/s of each step this process trained
        self.tracker: MlflowTracker | None = None
        self.step = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        self.resumed_from_step: int | None = None
        self._stop_signal: int | None = None

    # ----------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {
            "model": model_state,
            "optim": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.order.state_dict(),
            "train": {"step": self.step, "tokens_seen": self.tokens_seen},
            "rng": {f"rank{self.env.rank}": rng_state()},
        }

    def resume(self, checkpoint: Path) -> float:
        """Load every piece of state from `checkpoint`; returns the seconds it took. Writes
        nothing (the caller truncates metrics.jsonl once the run is committed to start)."""
        state = self._state()
        saved_world = read_meta(checkpoint)["world_size"]
        if self.env.rank >= saved_world:
            del state["rng"]  # this rank did not exist then: it keeps the seeded RNG
        seconds = self.checkpointer.load(checkpoint, state)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self.scheduler.load_state_dict(state["scheduler"])
        try:
            self.data.order.load_state_dict(state["data"])
        except ValueError as e:  # a checkpoint of an older version records no data identity
            raise ConfigError(f"checkpoint {checkpoint}: {e}") from e
        self.step = int(state["train"]["step"])
        self.tokens_seen = int(state["train"]["tokens_seen"])
        if "rng" in state:
            set_rng_state(state["rng"][f"rank{self.env.rank}"])
        self.last_checkpoint = checkpoint
        self.resumed_from_step = self.step
        return seconds

    def save(self) -> float:
        meta = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "world_size": self.env.world,
            "config": self.cfg.model_dump(mode="json"),
            "data": self.data_identity,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
        }
        path, seconds = self.checkpointer.save(self.step, self._state(), meta)
        self.last_checkpoint = path
        if self.tracker:
            self.tracker.set_tag("latest_checkpoint", str(path.resolve()))
        return seconds

    # ----------------------------------------------------------------- steps
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _doc_starts(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Where documents begin (BOS) when they are isolated (`documents`), else None."""
        if self.cfg.documents == "packed":
            return None
        return inputs == self.data.train.manifest.tokenizer.bos_id

    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; returns its metrics."""
        cfg = self.cfg
        _, stage = cfg.stage_at(self.step)
        batch_size, seq_len = cfg.stage_batch_size(stage), stage.seq_len
        want_stats = cfg.stats_every > 0 and self.step % cfg.stats_every == 0
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.env.device)
        stats = None
        for micro in range(cfg.grad_accum):
            inputs, labels = self.data.next_batch(batch_size, seq_len)
            with self._autocast():
                out = self.model(
                    inputs,
                    labels=labels,
                    return_stats=want_stats and micro == cfg.grad_accum - 1,
                    doc_starts=self._doc_starts(inputs),
                    inner_lr_scale=cfg.inner_lr_scale(self.step),
                )
            (out.loss / cfg.grad_accum).backward()
            loss_sum += out.loss.detach()
            stats = out.stats or stats
        loss = all_reduce_mean(loss_sum / cfg.grad_accum, self.env)
        metrics = {"loss": loss.item()}
        if stats:
            metrics.update(self._reduce_stats(stats))
        self._check_finite(metrics)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = clip_gradients(self.model, cfg.grad_clip).item()
        self._check_finite({"grad_norm": grad_norm})
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = self.env.world * cfg.grad_accum * batch_size * seq_len
        self.step += 1
        self.tokens_seen += tokens
        seconds = time.perf_counter() - start
        metrics.update(
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=tokens / seconds,
            tokens_seen=float(self.tokens_seen),
            seq_len=float(seq_len),
            step_seconds=seconds,
        )
        return metrics

    def _reduce_stats(self, stats: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Per-layer fast-weight statistics, averaged over ranks, as flat metric names."""
        names = [(i, k) for i, layer in enumerate(stats) for k in layer]
        values = torch.stack([stats[i][k].float().to(self.env.device) for i, k in names])
        values = all_reduce_mean(values, self.env).tolist()
        return {f"ttt/layer{i}/{k}": v for (i, k), v in zip(names, values, strict=True)}

    def _check_finite(self, metrics: dict[str, float]) -> None:
        bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
        if bad:
            keep = (
                f"; the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint
                else "; no checkpoint was saved yet"
            )
            raise TrainingDiverged(
                f"non-finite values at step {self.step + 1}: {bad}{keep}. Lower --lr or the "
                "model's eta_base, or raise --grad-clip"
            )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the fixed validation batches (None when the split is empty)."""
        _, stage = self.cfg.stage_at(max(0, self.step - 1))
        batch_size = self.cfg.stage_batch_size(stage)
        self.model.eval()
        losses = []
        for inputs, labels in self.data.val_batches(
            self.cfg.eval_batches, batch_size, stage.seq_len
        ):
            with self._autocast():
                out = self.model(inputs, labels=labels, doc_starts=self._doc_starts(inputs))
                losses.append(out.loss.float())
        self.model.train()
        if not losses:
            return None
        return all_reduce_mean(torch.stack(losses).mean(), self.env).item()

    # ----------------------------------------------------------------- loop
    def _install_signal_handlers(self) -> None:
        def stop(signum, _frame):
            self._stop_signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)

    def _stop_requested(self) -> bool:
        """Collective: every rank stops at the same step when any rank got a signal."""
        flag = torch.tensor(float(self._stop_signal is not None), device=self.env.device)
        if self.env.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def run(self, tracker: MlflowTracker | None) -> dict[str, Any]:
        """Train from `self.step` to `cfg.steps`; returns the summary (also written to disk)."""
        cfg = self.cfg
        self.tracker = tracker
        self._install_signal_handlers()
        self.model.train()
        progress = Progress(total=cfg.steps, enabled=self.env.is_main)
        record: dict[str, float] = {}
        end = min(cfg.steps, cfg.stop_at or cfg.steps)
        while self.step < end:
            record = self.train_step()
            self.step_throughput.append(record["tokens_per_s"])
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                record["val_loss"] = self.evaluate()
            saving = cfg.save_every and self.step % cfg.save_every == 0
            if saving:
                record["checkpoint_seconds"] = self.save()
            self._log(record, progress)
            if self._stop_requested():
                if not saving:
                    self.save()
                raise TrainingInterrupted(
                    f"stopped by signal at step {self.step}; checkpoint {self.last_checkpoint}; "
                    "rerun with --resume auto to continue"
                )
        if self.last_checkpoint is None or read_meta(self.last_checkpoint)["step"] != self.step:
            self.save()
        if self.step < cfg.steps:  # stopped early on purpose (stop_at)
            return self._summary(record, None, status="stopped")
        return self._summary(record, self.evaluate(), status="completed")

    def _log(self, record: dict[str, float], progress: Progress) -> None:
        if not self.env.is_main:
            return
        clean = {k: v for k, v in record.items() if v is not None}
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
            self.metrics.append({"step": self.step, **clean})
            if self.tracker:
                self.tracker.log(self.step, clean)
        progress.update(self.step, clean)

    def _median_throughput(self) -> float | None:
        """Median training tokens/s of this process's steps, the first (warm-up) left out."""
        steps = self.step_throughput[1:]
        return float(statistics.median(steps)) if steps else None

    def _summary(
        self, last: dict[str, float], val_loss: float | None, status: str
    ) -> dict[str, Any]:
        summary = {
            "status": status,
            "steps": self.step,
            "total_steps": self.cfg.steps,
            "tokens_seen": self.tokens_seen,
            "final_loss": last.get("loss"),
            "val_loss": val_loss,
            "checkpoint": str(self.last_checkpoint.resolve()) if self.last_checkpoint else None,
            "resumed_from_step": self.resumed_from_step,
            "init_from": str(self.cfg.init_from.resolve()) if self.cfg.init_from else None,
            "world_size": self.env.world,
            "strategy": self.cfg.strategy,
            "tokens_per_s": self._median_throughput(),
        }
        if self.env.is_main:
            if self.tracker and val_loss is not None:
                self.tracker.log(self.step, {"final_val_loss": val_loss})
            atomic_write_text(self.cfg.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        return summary
