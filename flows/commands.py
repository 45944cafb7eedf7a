"""For each stage of a bring-up, the stage CLI command that redoes it by hand (in `bringup.json`
as `commands`): debug one stage without Prefect.

Flags are read off the stage packages' own argument parsers (each flag's `dest` is a config
field), so a command parses back to exactly the config the flow ran; a setting with no flag is
an error here, not a silently different command. No MLflow flags: a by-hand rerun stays out of
the bring-up's runs.
"""

from __future__ import annotations

import argparse
import shlex

from pydantic import BaseModel

from flows.config import PipelineConfig
from train_stage.distributed import torchrun_command

EVAL_COMMANDS = {
    "perplexity": "perplexity",
    "position_loss": "position-loss",
    "niah": "niah",
    "latency": "latency",
}


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand `name` of `parser`."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def flags(
    parser: argparse.ArgumentParser,
    cfg: BaseModel,
    dests: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """The flags of `parser` that set `cfg`'s non-default fields (but `skip`), and its required
    ones. `dests` maps a
    flag's dest to the field it sets where the names differ. Raises ValueError for a field set
    to a non-default value that no flag sets."""
    by_field = {(dests or {}).get(a.dest, a.dest): a for a in parser._actions if a.option_strings}
    out: list[str] = []
    for name, field in type(cfg).model_fields.items():
        if name in skip:
            continue
        value, action = getattr(cfg, name), by_field.get(name)
        if value == field.get_default(call_default_factory=True) and not (
            action and action.required
        ):
            continue
        if action is None:
            raise ValueError(f"{type(cfg).__name__}.{name}={value!r} has no flag in {parser.prog}")
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            out.append(flag)  # the only non-default a switch can mean
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def stage_commands(cfg: PipelineConfig) -> dict[str, str]:
    """stage -> shell command (tokenizer, shards, train, bench, export, each eval)."""
    from data_stage.__main__ import _CORPUS_FLAGS
    from data_stage.__main__ import _parser as data_parser
    from eval_stage.cli import _parser as eval_parser

    def data(stage: str, stage_cfg: BaseModel) -> list[str]:
        p = subcommand_parser(data_parser(), stage)
        return [
            "python", "-m", "data_stage", stage,
            *flags(p, stage_cfg.corpus, _CORPUS_FLAGS),  # type: ignore[attr-defined]
            *flags(p, stage_cfg, skip=("corpus",)),
        ]  # fmt: skip

    train_dir, export_dir, eval_dir = (cfg.stage_dir(s) for s in ("train", "export", "eval"))
    train = ["--config", str(train_dir / "train_config.yaml"), "--resume", "auto", "--no-mlflow"]
    export = ["--run-dir", str(train_dir), "--out", str(export_dir), "--force"]
    commands = {
        "tokenizer": data("tokenizer", cfg.tokenizer_config()),
        "shards": data("shards", cfg.shard_config()),
        "train": ["python", *torchrun_command(cfg.nproc, "train_stage", train)[1:]],
        "export": ["python", "-m", "train_stage", "export", *export],
    }
    if cfg.mixer == "ttt_linear":
        bench = subcommand_parser(eval_parser(), "bench-dual-primal")
        out = ["--out", str(cfg.stage_dir("bench"))]
        commands["bench"] = ["python", "-m", "eval_stage", "bench-dual-primal", *out,
                             *flags(bench, cfg.bench)]  # fmt: skip
    baseline = ["--baseline", str(cfg.run_root / cfg.baseline / "export")] if cfg.baseline else []
    for name in cfg.evals:
        sub = EVAL_COMMANDS[name]
        model = ["--model", str(export_dir)]
        commands[f"eval.{name}"] = [
            "python", "-m", "eval_stage", sub, *model, *baseline, "--out", str(eval_dir),
            *flags(subcommand_parser(eval_parser(), sub), cfg.eval_config(name)),
        ]  # fmt: skip
    return {stage: shlex.join(argv) for stage, argv in commands.items()}
