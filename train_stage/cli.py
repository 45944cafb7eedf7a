"""`python -m train_stage`: train (default) or export. Runs alone or under torchrun.

Exit codes: 0 done, 2 refused before any work (bad config, data, resume target, a run dir in
use), 3 diverged (NaN/inf; last good checkpoint kept), 4 environment (no space left: the last
good checkpoint kept, temps removed), 143 stopped by SIGTERM/SIGINT after saving. Every failure
is one line on stderr (`data_stage.faults.run_cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from data_stage.faults import run_cli
from data_stage.run_lock import RunDirBusy, RunDirUnusable

from .config import TRAIN_PRESETS, CurriculumStage, TrainConfig, deep_merge
from .preflight import ConfigError

EXIT_REFUSED = 2

# flag -> (config path, type)
OVERRIDES: dict[str, tuple[str, type]] = {
    "data": ("data", str),
    "run_dir": ("run_dir", str),
    "steps": ("steps", int),
    "stop_at": ("stop_at", int),
    "batch_size": ("batch_size", int),
    "grad_accum": ("grad_accum", int),
    "seq_len": ("seq_len", int),
    "lr": ("lr", float),
    "warmup_steps": ("warmup_steps", int),
    "weight_decay": ("weight_decay", float),
    "grad_clip": ("grad_clip", float),
    "strategy": ("strategy", str),
    "precision": ("precision", str),
    "device": ("device", str),
    "resume": ("resume", str),
    "save_every": ("save_every", int),
    "keep_last": ("keep_last", int),
    "eval_every": ("eval_every", int),
    "eval_batches": ("eval_batches", int),
    "log_every": ("log_every", int),
    "stats_every": ("stats_every", int),
    "seed": ("seed", int),
    "vocab_size": ("model.vocab_size", int),
    "mixer": ("model.mixer", str),
    "eta_base": ("model.eta_base", float),
    "checkpoint_n_chunks": ("model.checkpoint_n_chunks", int),
    "ops_backend": ("model.ops_backend", str),
    "mlflow_tracking_uri": ("mlflow.tracking_uri", str),
    "mlflow_experiment": ("mlflow.experiment", str),
    "mlflow_run_name": ("mlflow.run_name", str),
    "mlflow_parent_run_id": ("mlflow.parent_run_id", str),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message}\n")


def parse_curriculum(text: str) -> list[dict[str, Any]]:
    """'SEQ:STEPS[:LR[:BATCH]],...' e.g. '64:100,128:50:1e-3' -> curriculum stages."""
    stages = []
    for item in text.split(","):
        fields = item.split(":")
        if not 2 <= len(fields) <= 4:
            raise ValueError(f"curriculum stage {item!r} is not SEQ:STEPS[:LR[:BATCH]]")
        names = ("seq_len", "steps", "lr", "batch_size")
        stages.append({n: v for n, v in zip(names, fields, strict=False) if v})
    return [CurriculumStage.model_validate(s).model_dump() for s in stages]


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m train_stage",
        description="Train a TTT-Linear LM (or the "
        "attention baseline). Under torchrun: torchrun --nproc_per_node N -m train_stage",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(TRAIN_PRESETS))
    source.add_argument("--config", type=Path, help="a YAML TrainConfig (e.g. a run's config.yaml)")
    for flag, (path, kind) in OVERRIDES.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"sets {path}")
    p.add_argument("--curriculum", help="SEQ:STEPS[:LR[:BATCH]],... (replaces --steps)")
    p.add_argument("--no-mlflow", action="store_true", help="keep metrics.jsonl only")
    p.add_argument("--no-verify-data", action="store_true", help="skip the sha256 shard check")
    return p


def build_config(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for flag, (path, _) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            *parents, leaf = path.split(".")
            target = overrides
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
    if args.curriculum:
        overrides["curriculum"] = parse_curriculum(args.curriculum)
    if args.no_mlflow:
        overrides.setdefault("mlflow", {})["enabled"] = False
    if args.no_verify_data:
        overrides["verify_data"] = False
    if args.preset:
        base = TrainConfig.preset_dict(args.preset, args.mixer)
    else:
        base = yaml.safe_load(args.config.read_text())
    if "curriculum" in overrides and "steps" not in overrides:
        base.pop("steps", None)  # a curriculum given on the command line sets the length
    return TrainConfig.model_validate(deep_merge(base, overrides))


def one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid config: {where}: {first['msg']}{more}"


def _describe(error: BaseException) -> str:
    return one_line(error) if isinstance(error, ValidationError) else str(error)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    from .console import keep_running_without_console
    from .distributed import world_from_env
    from .run import run_training

    keep_running_without_console()
    rank = world_from_env()[0]
    args = train_parser().parse_args(argv)

    def train() -> int:
        try:
            cfg = build_config(args)
        except (ValueError, OSError, yaml.YAMLError) as e:
            if isinstance(e, ValidationError):
                raise
            raise ConfigError(str(e)) from e
        return run_training(cfg)

    return run_cli(
        "train_stage",
        train,
        (ConfigError, ValidationError, RunDirBusy, RunDirUnusable),
        describe=_describe,
        label="refused",
        quiet=rank != 0,
    )


def export_main(argv: list[str]) -> int:
    from .export import export_model

    p = _Parser(
        prog="python -m train_stage export",
        description="Write a run's checkpoint as a model directory (TTTLM.save_pretrained: "
        "config.json, model.safetensors) with its tokenizer, export.json and checksums.json, "
        "atomically (a temp dir beside --out, renamed into place).",
    )
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="must not be, contain or lie inside "
                   "the run dir, the checkpoint or the shard dir")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, help="default: the run's latest checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing export at --out "
                   "(whole, once the new one is complete)")  # fmt: skip
    args = p.parse_args(argv)

    def export() -> int:
        print(f"exported {export_model(args.run_dir, args.out, args.checkpoint, force=args.force)}")
        return 0

    # the same rule as training: a refusal is one line and exit 2, a full disk exit 4
    refusals = (FileNotFoundError, FileExistsError, ValueError)
    return run_cli("train_stage", export, refusals, label="refused")
