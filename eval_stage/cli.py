"""`python -m eval_stage <eval>`: thin front ends over the eval functions.

Each command takes every field of the pydantic config a flow passes as a flag
(`stage_common.config_cli`: `--config FILE.yaml`, then the flags given), loads the model(s), runs
the eval and `publish`es the result (JSON + PNG in `--out`, default next to the model; MLflow
when a run id is given). Bad input: one line on stderr, exit 2, nothing written.
`bench-dual-primal --assert-speedup X` exits 1 when the forward dual/primal speedup is below X
(results written). `command` renders an eval's config as the command that runs it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from data_stage import DataStageError
from stage_common.allocator import keep_freed_memory
from stage_common.config_cli import (
    Alias,
    CliParser,
    ConfigFileError,
    ConfigFlags,
    StageCommand,
    describe_refusal,
    parse_stage_command,
    subcommand_flags,
)
from stage_common.faults import output_dir_problem, run_cli
from stage_common.run_lock import RunDirBusy, RunDirLock, enclosing_run_dir, is_run_dir
from ttt_core.ops import OPS_BACKENDS

from . import bench, compare, harness, latency, long_context, niah, perplexity, position_loss
from .chat import chat, generate_text
from .config import (
    BenchConfig,
    GenerateConfig,
    LatencyConfig,
    LmEvalConfig,
    LongContextConfig,
    NiahConfig,
    PerplexityConfig,
    PositionLossConfig,
)
from .device import resolve_device
from .errors import EvalInputError, SpeedupBelowThreshold
from .models import LoadedModel, default_out_dir, open_model, preset_models
from .publish import publish, write_comparison, write_long_context
from .results import EvalResult
from .tracking import TrackingConfig

EXIT_BELOW_THRESHOLD = 1

SUBCOMMANDS: dict[type[BaseModel], str] = {
    PerplexityConfig: "perplexity",
    PositionLossConfig: "position-loss",
    NiahConfig: "niah",
    LmEvalConfig: "lm-eval",
    LatencyConfig: "latency",
    BenchConfig: "bench-dual-primal",
    GenerateConfig: "generate",
}

SUMMARIES = {
    "perplexity": perplexity.summarize,
    "position-loss": position_loss.summarize,
    "niah": niah.summarize,
    "latency": latency.summarize,
    "bench-dual-primal": bench.summarize,
    "lm-eval": harness.summarize,
    "compare": compare.summarize,
}


def _out_dir(args: argparse.Namespace, model: LoadedModel | None) -> Path:
    """`--out`, else next to the model; checked before any work."""
    out = args.out or (default_out_dir(model) if model is not None else None)
    if out is None:
        raise EvalInputError("no model directory to write next to; pass --out DIR")
    problem = output_dir_problem(out)
    if problem:
        raise EvalInputError(f"--out {problem}")
    return out


def _models(args: argparse.Namespace) -> tuple[LoadedModel, LoadedModel | None]:
    device = resolve_device(args.device)
    model = open_model(args.model, device)
    baseline = open_model(args.baseline, device) if args.baseline else None
    return model, baseline


def _finish(args: argparse.Namespace, result: EvalResult, out: Path) -> None:
    tracking = TrackingConfig.from_env(args.mlflow_run_id, args.mlflow_tracking_uri)
    files = publish(result, out, tracking)
    device = result.device
    print(
        f"device: {device.type} ({device.name}), {device.threads} threads, torch {device.torch_version}"
    )
    print(SUMMARIES[result.eval](result))
    print("wrote " + ", ".join(map(str, files)))


def _run_model_eval(
    args: argparse.Namespace,
    config: BaseModel,
    evaluate: Callable[[LoadedModel, Any, LoadedModel | None], EvalResult],
) -> int:
    model, baseline = _models(args)
    out = _out_dir(args, model)
    _finish(args, evaluate(model, config, baseline), out)
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    return _run_model_eval(args, config, perplexity.evaluate_perplexity)


def _cmd_position_loss(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    return _run_model_eval(args, config, position_loss.evaluate_position_loss)


def _cmd_niah(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    return _run_model_eval(args, config, niah.evaluate_niah)


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    model, baseline = _models(args)
    out = _out_dir(args, model)
    if config.task_files is None:  # the built-in task's documents are kept beside the result
        config = config.model_copy(update={"task_files": out / "lm_eval_tasks"})
    _finish(args, harness.evaluate_lm_eval(model, config, baseline), out)
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    if (args.preset is None) == (args.model is None):
        raise EvalInputError(
            "pass either --model PATH (optionally --baseline PATH) or --preset NAME"
        )
    if args.preset is not None:
        if args.baseline is not None:
            raise EvalInputError("--preset builds its own attention baseline; drop --baseline")
        out = _out_dir(args, None)
        model, baseline = preset_models(args.preset, resolve_device(args.device), config.seed)
    else:
        model, baseline = _models(args)
        out = _out_dir(args, model)
    _finish(args, latency.evaluate_latency(model, config, baseline), out)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    out = _out_dir(args, None)
    result = bench.evaluate_bench_dual_primal(config)
    _finish(args, result, out)
    bench.check_speedup(result)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    out = args.out or compare.results_dir(args.runs[0]).parent / "compare"
    tracking = TrackingConfig.from_env(args.mlflow_run_id, args.mlflow_tracking_uri)
    result, files = write_comparison(args.runs, out, tracking)
    print(compare.summarize(result))
    print("wrote " + ", ".join(map(str, files)))
    return 0


def _cmd_long_context(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    out = long_context.check_out_dir(args.out)
    resolved = [path.resolve() for path in args.model]
    if len(set(resolved)) < len(resolved):
        raise EvalInputError(f"a --model is given twice: {[str(p) for p in args.model]}")
    device = resolve_device(args.device)
    models = [open_model(path, device) for path in args.model]
    result = long_context.evaluate_long_context(models, config)
    tracking = TrackingConfig.from_env(args.mlflow_run_id, args.mlflow_tracking_uri)
    files = write_long_context(result, out, tracking)
    device_info = result.device
    print(f"device: {device_info.type} ({device_info.name}), {device_info.threads} threads")
    print(long_context.summarize(result))
    print("wrote " + ", ".join(map(str, files)))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    config = args.config_flags.config(args)
    if args.prompt is None and not args.interactive:
        raise EvalInputError("pass --prompt TEXT, or --interactive to read turns from stdin")
    loaded = open_model(args.model, resolve_device(args.device))

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if args.interactive:
        first = [] if args.prompt is None else [args.prompt]
        chat(loaded, config, itertools.chain(first, sys.stdin), show)
    else:
        generate_text(loaded, args.prompt, config, show)
        show("\n")
    return 0


def _add_model_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", type=Path, required=required,
                   help="export directory, train_stage run directory, or an MLflow URI "
                   "(models:/NAME@champion, runs:/ID/model)")  # fmt: skip
    p.add_argument("--baseline", type=Path,
                   help="attention baseline (export or run directory), evaluated alongside")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _add_output_flags(
    p: argparse.ArgumentParser,
    default: str | None = "<export>/eval or <run>/eval/<checkpoint>",
) -> None:
    """`--out` (`default` None: no default, the command requires it) and the MLflow flags."""
    where = f"default: {default}" if default else "required"
    p.add_argument("--out", type=Path, help=f"results folder ({where})")
    p.add_argument("--mlflow-run-id", help="log metrics and files to this run ($MLFLOW_RUN_ID)")
    p.add_argument("--mlflow-tracking-uri", help="MLflow tracking URI ($MLFLOW_TRACKING_URI)")


def build_parser() -> CliParser:
    parser = CliParser(prog="python -m eval_stage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_eval(name: str, help: str, cls: type[BaseModel], run: Callable) -> CliParser:
        p = sub.add_parser(name, help=help)
        _add_model_flags(p)
        _add_output_flags(p)
        ConfigFlags(p, cls)
        p.set_defaults(run=run)
        return p

    model_eval("perplexity", "validation loss and perplexity", PerplexityConfig, _cmd_perplexity)
    model_eval("position-loss", "loss by token index at 1x..4x the train length",
               PositionLossConfig, _cmd_position_loss)  # fmt: skip
    model_eval("niah", "passkey retrieval accuracy by context length x depth", NiahConfig,
               _cmd_niah)  # fmt: skip
    model_eval("lm-eval", "lm-evaluation-harness on local tasks (offline)", LmEvalConfig,
               _cmd_lm_eval)  # fmt: skip

    p = sub.add_parser("latency", help="prefill tokens/s and decode ms/token vs context")
    _add_model_flags(p, required=False)
    _add_output_flags(p)
    p.add_argument("--preset", help="build TTT and attention models of this ModelConfig preset "
                   "with random weights instead of --model/--baseline")  # fmt: skip
    ConfigFlags(p, LatencyConfig)
    p.set_defaults(run=_cmd_latency)

    p = sub.add_parser("bench-dual-primal", help="dual vs anchored primal vs online op timing")
    _add_output_flags(p)
    backend = {"nargs": "+", "choices": list(OPS_BACKENDS)}
    ConfigFlags(p, BenchConfig, aliases=(Alias("--backend", "backends", backend),))
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("compare", help="runs side by side: one table and one figure")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="bring-up or results directories; the first is the reference")  # fmt: skip
    _add_output_flags(p, default="<first RUN>/compare")
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("long-context", help="models on the same val sequences at growing lengths: "
                       "loss of the second half paired against the first model, passkey "
                       "accuracy, state size, decode ms")  # fmt: skip
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="export or run directory, or an MLflow URI; repeat it, the first is "
                   "the reference")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_output_flags(p, default=None)
    ConfigFlags(p, LongContextConfig)
    p.set_defaults(run=_cmd_long_context)

    p = sub.add_parser("generate", help="text in, text out (streamed); --interactive: multi-turn")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--prompt", help="the text to continue (first turn with --interactive)")
    p.add_argument("--interactive", action="store_true", help="read turns from stdin until EOF")
    ConfigFlags(p, GenerateConfig)
    p.set_defaults(run=_cmd_generate)
    return parser


def command(
    cfg: BaseModel,
    *,
    model: Path | None = None,
    baseline: Path | None = None,
    out: Path | None = None,
) -> list[str]:
    """`python -m eval_stage <eval> ...`: the command that runs the eval configured by `cfg`
    (its type picks the eval) on `model` (and `baseline`), writing into `out`."""
    name = SUBCOMMANDS[type(cfg)]
    paths = {"--model": model, "--baseline": baseline, "--out": out}
    given = [
        token for flag, path in paths.items() if path is not None for token in (flag, str(path))
    ]
    flags = subcommand_flags(build_parser(), name)
    return ["python", "-m", "eval_stage", name, *given, *flags.command(cfg)]


def compare_command(runs: Sequence[Path], out: Path) -> list[str]:
    """`python -m eval_stage compare RUN... --out OUT`: the comparison of `runs` into `out`."""
    return ["python", "-m", "eval_stage", "compare", *map(str, runs), "--out", str(out)]


def long_context_command(models: Sequence[Path], cfg: LongContextConfig, out: Path) -> list[str]:
    """`python -m eval_stage long-context --model M... --out OUT <cfg's flags>`."""
    given = [token for model in models for token in ("--model", str(model))]
    flags = subcommand_flags(build_parser(), "long-context")
    return ["python", "-m", "eval_stage", "long-context", *given, "--out", str(out),
            *flags.command(cfg)]  # fmt: skip


def parse_command(argv: Sequence[str]) -> StageCommand:
    """The eval, its config and its other flags that an `eval_stage` command line (with or without
    its leading `python -m eval_stage`) stands for, without running it."""
    return parse_stage_command(build_parser(), argv, "eval_stage")


def _run_dir_written(args: argparse.Namespace) -> Path | None:
    """The train_stage run dir this command will write into: `--out` inside one, or the
    default output next to a run dir `--model`. None when it writes elsewhere (or nowhere)."""
    if not hasattr(args, "out"):  # generate writes no files
        return None
    if args.out is not None:
        return enclosing_run_dir(args.out)
    model = getattr(args, "model", None)
    if model is None or isinstance(model, list):  # long-context writes only into --out
        return None
    return Path(model) if is_run_dir(Path(model)) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prefix = f"eval_stage {args.command}"

    def body() -> int:
        run_dir = _run_dir_written(args)
        if run_dir is None:
            return _run(args)
        with RunDirLock(run_dir, prefix):  # no trainer may purge what this eval reads
            return _run(args)

    return run_cli(
        prefix,
        body,
        (EvalInputError, DataStageError, ValidationError, RunDirBusy, ConfigFileError),
        describe=describe_refusal,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except SpeedupBelowThreshold as e:
        print(f"eval_stage {args.command}: {e}", file=sys.stderr)
        return EXIT_BELOW_THRESHOLD
