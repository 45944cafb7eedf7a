"""For each stage of a bring-up, the stage CLI command that redoes it by hand (in `bringup.json`
as `commands`): debug one stage without Prefect.

Each stage renders its own command from its config (`data_stage.command`, `train_stage.command`,
`eval_stage.command`), checked there to parse back to exactly that config. No MLflow flags: a
by-hand rerun stays out of the bring-up's runs.
"""

from __future__ import annotations

import shlex

import data_stage
import eval_stage
import train_stage
from flows.config import DATA_STAGES, PipelineConfig


def stage_commands(cfg: PipelineConfig) -> dict[str, str]:
    """stage -> shell command (tokenizer, shards, train, bench, export, each eval; with an
    extension, `extend_shards` and `extend.<stage>`; with controls, `controls.<mixer>.<stage>`
    for each control's own stages and `compare`; `long_context` when configured)."""
    train_dir, export_dir, eval_dir = (cfg.stage_dir(s) for s in ("train", "export", "eval"))
    commands = {
        "tokenizer": data_stage.command(cfg.tokenizer_config()),
        "shards": data_stage.command(cfg.shard_config()),
        "train": train_stage.command(train_dir / "train_config.yaml", nproc=cfg.nproc),
        "export": train_stage.export_command(train_dir, export_dir),
    }
    if cfg.mixer == "ttt_linear":
        commands["bench"] = eval_stage.command(cfg.bench, out=cfg.stage_dir("bench"))
    baseline = cfg.run_root / cfg.baseline / "export" if cfg.baseline else None
    for name in cfg.evals:
        commands[f"eval.{name}"] = eval_stage.command(
            cfg.eval_config(name), model=export_dir, baseline=baseline, out=eval_dir
        )
    if cfg.extend_seq_len is not None:
        extend_dir, extend_export = cfg.stage_dir("extend_train"), cfg.stage_dir("extend_export")
        commands["extend_shards"] = data_stage.command(cfg.extend_shard_config())
        commands["extend.train"] = train_stage.command(
            extend_dir / "train_config.yaml", nproc=cfg.nproc
        )
        commands["extend.export"] = train_stage.export_command(extend_dir, extend_export)
        for name in cfg.evals:
            commands[f"extend.eval.{name}"] = eval_stage.command(
                cfg.eval_config(name, extended=True),
                model=extend_export,
                out=cfg.stage_dir("extend_eval"),
            )
    for mixer in cfg.controls:
        control = stage_commands(cfg.control_config(mixer))
        commands |= {f"controls.{mixer}.{stage}": shlex.split(command)
                     for stage, command in control.items() if stage not in DATA_STAGES}  # fmt: skip
    if cfg.controls:
        runs = [cfg.run_dir, *(cfg.control_config(m).run_dir for m in cfg.controls)]
        commands["compare"] = eval_stage.compare_command(runs, cfg.stage_dir("compare"))
    if cfg.long_context is not None:
        export = "extend_export" if cfg.extend_seq_len is not None else "export"
        configs = [cfg, *(cfg.control_config(m) for m in cfg.controls)]
        commands["long_context"] = eval_stage.long_context_command(
            [c.stage_dir(export) for c in configs],
            cfg.long_context_config(),
            cfg.stage_dir("long_context"),
        )
    return {stage: shlex.join(argv) for stage, argv in commands.items()}
