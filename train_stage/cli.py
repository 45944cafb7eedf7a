"""`python -m train_stage`: train (default) or export. Runs alone or under torchrun.

Every `TrainConfig` field is a flag (the model's and MLflow's dotted), over `--preset NAME` or
`--config FILE.yaml` (`stage_common.config_cli`); the earlier flat spellings are kept as `ALIASES`.
`command` / `export_command` render the by-hand commands a bring-up records.

Exit codes: 0 done, 2 refused before any work (bad config, data, resume target, a run dir in
use), 3 diverged (NaN/inf; last good checkpoint kept), 4 environment (no space left: the last
good checkpoint kept, temps removed), 143 stopped by SIGTERM/SIGINT after saving. Every failure
is one line on stderr (`stage_common.faults.run_cli`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stage_common.config_cli import (
    Alias,
    CliParser,
    ConfigFlags,
    StageCommand,
    deep_merge,
    describe_refusal,
    parse_stage_command,
)
from stage_common.faults import run_cli
from stage_common.run_lock import RunDirBusy, RunDirUnusable
from ttt_core import family_of

from .config import TRAIN_PRESETS, CurriculumStage, TrainConfig
from .distributed import torchrun_command
from .preflight import ConfigError

EXIT_REFUSED = 2

# The flags of the hand-written CLI this one replaced, kept (the derived ones are dotted).
ALIASES = (
    Alias("--vocab-size", "model.vocab_size", {"type": int}),
    Alias("--mixer", "model.mixer"),
    Alias("--eta-base", "model.eta_base", {"type": float}),
    Alias("--checkpoint-n-chunks", "model.checkpoint_n_chunks", {"type": int}),
    Alias("--ops-backend", "model.ops_backend"),
    Alias("--mlflow-tracking-uri", "mlflow.tracking_uri"),
    Alias("--mlflow-experiment", "mlflow.experiment"),
    Alias("--mlflow-run-name", "mlflow.run_name"),
    Alias("--mlflow-parent-run-id", "mlflow.parent_run_id"),
    Alias("--no-mlflow", "mlflow.enabled", {"action": "store_const", "const": False}),
)


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


CURRICULUM = Alias(
    "--curriculum",
    "curriculum",
    {"metavar": "SEQ:STEPS[:LR[:BATCH]],...", "help": "given here, it replaces --steps"},
    convert=parse_curriculum,
)


def train_parser() -> CliParser:
    p = CliParser(
        prog="python -m train_stage",
        description="Train a TTT-Linear LM (or the attention baseline). Under torchrun: "
        "torchrun --nproc_per_node N -m train_stage. Every TrainConfig field is a flag; the "
        "defaults shown are TrainConfig's, the --preset or --config file replaces them.",
    )
    presets = {name: partial(_recipe, name) for name in TRAIN_PRESETS}
    aliases = (*ALIASES, CURRICULUM)
    ConfigFlags(p, TrainConfig, aliases=aliases, presets=presets, base_required=True, merge=_merge)
    return p


def _recipe(name: str, flags: dict[str, Any]) -> dict[str, Any]:
    """Preset `name` tuned for the family the flags ask for (`--mixer`, or `e2e` when they set
    `--model.e2e-suffix-layers`), else for its own."""
    return TrainConfig.preset_dict(name, family_of(flags.get("model") or {}))


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    if "curriculum" in overrides and "steps" not in overrides:
        base = {k: v for k, v in base.items() if k != "steps"}  # the curriculum sets the length
    return deep_merge(base, overrides)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `args`: the preset or config file, the flags given over it."""
    return args.config_flags.config(args)


def command(config_file: Path, *, nproc: int = 1, mlflow: bool = False) -> list[str]:
    """The command that trains (resuming) the TrainConfig saved in `config_file` by hand, under
    torchrun with `nproc` processes; `mlflow=False` keeps it out of MLflow."""
    args = ["--config", str(config_file), "--resume", "auto", *([] if mlflow else ["--no-mlflow"])]
    return ["python", *torchrun_command(nproc, "train_stage", args)[1:]]


def export_command(run_dir: Path, out: Path, *, force: bool = True) -> list[str]:
    """`python -m train_stage export`: the run's latest checkpoint as a model directory."""
    flags = ["--run-dir", str(run_dir), "--out", str(out), *(["--force"] if force else [])]
    return ["python", "-m", "train_stage", "export", *flags]


def parse_command(argv: Sequence[str]) -> StageCommand:
    """The TrainConfig a `train_stage` command line (torchrun's prefix allowed) stands for; its
    `--config` file is read."""
    return parse_stage_command(train_parser(), argv, "train_stage")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    from stage_common.allocator import keep_freed_memory

    from .console import keep_running_without_console
    from .distributed import world_from_env
    from .run import run_training

    keep_running_without_console()
    keep_freed_memory()
    rank = world_from_env()[0]
    args = train_parser().parse_args(argv)

    def train() -> int:
        try:
            cfg = build_config(args)
        except (ValueError, OSError) as e:
            if isinstance(e, ValidationError):
                raise
            raise ConfigError(str(e)) from e
        return run_training(cfg)

    return run_cli(
        "train_stage",
        train,
        (ConfigError, ValidationError, RunDirBusy, RunDirUnusable),
        describe=describe_refusal,
        label="refused",
        quiet=rank != 0,
    )


def export_main(argv: list[str]) -> int:
    from .export import export_model

    p = CliParser(
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
