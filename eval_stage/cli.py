"""`python -m eval_stage <eval>`: thin argparse front ends over the eval functions.

Each command builds the same pydantic config a flow passes, loads the model(s), runs the eval
and `publish`es the result (JSON + PNG in `--out`, default next to the model; MLflow when a run
id is given). Bad input: one line on stderr, exit 2, nothing written. `bench-dual-primal
--assert-speedup X` exits 1 when the forward dual/primal speedup is below X (results written).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from data_stage.errors import DataStageError, validation_summary
from data_stage.faults import output_dir_problem, run_cli
from data_stage.run_lock import RunDirBusy, RunDirLock, enclosing_run_dir, is_run_dir
from ttt_core.ops import OPS_BACKENDS

from . import bench, compare, harness, latency, niah, perplexity, position_loss
from .chat import chat, generate_text
from .config import (
    BenchConfig,
    GenerateConfig,
    LatencyConfig,
    LmEvalConfig,
    NiahConfig,
    PerplexityConfig,
    PositionLossConfig,
)
from .device import resolve_device
from .errors import EvalInputError, SpeedupBelowThreshold
from .models import LoadedModel, default_out_dir, open_model, preset_models
from .publish import publish, write_comparison
from .results import EvalResult
from .tracking import TrackingConfig

C = TypeVar("C", bound=BaseModel)

EXIT_BAD_INPUT = 2  # argparse errors; the others via data_stage.faults.run_cli
EXIT_BELOW_THRESHOLD = 1

SUMMARIES = {
    "perplexity": perplexity.summarize,
    "position-loss": position_loss.summarize,
    "niah": niah.summarize,
    "latency": latency.summarize,
    "bench-dual-primal": bench.summarize,
    "lm-eval": harness.summarize,
    "compare": compare.summarize,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _config(args: argparse.Namespace, cls: type[C]) -> C:
    """`cls` from the flags the user passed (each flag's dest is the field's name); the fields
    whose flags were not given keep the config's defaults."""
    given = {f: getattr(args, f) for f in cls.model_fields if getattr(args, f, None) is not None}
    return cls(**given)


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
    config = _config(args, PerplexityConfig)
    return _run_model_eval(args, config, perplexity.evaluate_perplexity)


def _cmd_position_loss(args: argparse.Namespace) -> int:
    config = _config(args, PositionLossConfig)
    return _run_model_eval(args, config, position_loss.evaluate_position_loss)


def _cmd_niah(args: argparse.Namespace) -> int:
    config = _config(args, NiahConfig)
    return _run_model_eval(args, config, niah.evaluate_niah)


def _cmd_lm_eval(args: argparse.Namespace) -> int:
    config = _config(args, LmEvalConfig)
    model, baseline = _models(args)
    out = _out_dir(args, model)
    # The built-in task's documents are kept beside the result.
    config = config.model_copy(update={"task_files": out / "lm_eval_tasks"})
    _finish(args, harness.evaluate_lm_eval(model, config, baseline), out)
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    config = _config(args, LatencyConfig)
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
    config = _config(args, BenchConfig)
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


def _cmd_generate(args: argparse.Namespace) -> int:
    config = _config(args, GenerateConfig)
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
                   help="export directory or train_stage run directory")  # fmt: skip
    p.add_argument("--baseline", type=Path,
                   help="attention baseline (export or run directory), evaluated alongside")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _add_verify_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify-data", dest="verify_data", action="store_false", default=None,
                   help="skip checking the val shards (sha256, row length, id range)")  # fmt: skip


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path,
                   help="results folder (default: <export>/eval or <run>/eval/<checkpoint>)")  # fmt: skip
    p.add_argument("--mlflow-run-id", help="log metrics and files to this run ($MLFLOW_RUN_ID)")
    p.add_argument("--mlflow-tracking-uri", help="MLflow tracking URI ($MLFLOW_TRACKING_URI)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m eval_stage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("perplexity", help="validation loss and perplexity")
    _add_model_flags(p)
    _add_output_flags(p)
    p.add_argument("--data", type=Path, required=True, help="shard directory (val split)")
    _add_verify_flag(p)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="predicted tokens per row (<= shards' seq_len)")
    p.add_argument("--max-batches", type=int)
    p.set_defaults(run=_cmd_perplexity)

    p = sub.add_parser("position-loss", help="loss by token index at 1x..4x the train length")
    _add_model_flags(p)
    _add_output_flags(p)
    p.add_argument("--data", type=Path, required=True, help="shard directory (val split)")
    _add_verify_flag(p)
    p.add_argument("--train-len", type=int, help="training length (default: shards' seq_len)")
    p.add_argument("--multipliers", type=int, nargs="+", help="lengths as multiples (1 2 4)")
    p.add_argument("--sequences", type=int, help="sequences per length (16)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--buckets", choices=["log", "linear"])
    p.add_argument("--n-buckets", type=int)
    p.set_defaults(run=_cmd_position_loss)

    p = sub.add_parser("niah", help="passkey retrieval accuracy by context length x depth")
    _add_model_flags(p)
    _add_output_flags(p)
    p.add_argument("--data", type=Path, required=True, help="shard directory (val haystacks)")
    _add_verify_flag(p)
    p.add_argument("--contexts", type=int, nargs="+", help="prompt lengths in tokens")
    p.add_argument("--depths", type=float, nargs="+", help="needle depths in [0, 1]")
    p.add_argument("--trials", type=int)
    p.add_argument("--digits", type=int, help="passkey length (5)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.set_defaults(run=_cmd_niah)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness on local tasks (offline)")
    _add_model_flags(p)
    _add_output_flags(p)
    p.add_argument("--data", type=Path, required=True,
                   help="shard directory (tokenizer; val split for ttt_cloze)")  # fmt: skip
    p.add_argument("--tasks", nargs="+", help="task names (default: ttt_cloze)")
    p.add_argument("--task-dir", type=Path, help="folder of lm-eval task YAML files")
    p.add_argument("--docs", type=int, help="ttt_cloze documents (64)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, help="documents per task")
    p.set_defaults(run=_cmd_lm_eval)

    p = sub.add_parser("latency", help="prefill tokens/s and decode ms/token vs context")
    _add_model_flags(p, required=False)
    _add_output_flags(p)
    p.add_argument("--preset", help="build TTT and attention models of this ModelConfig preset "
                   "with random weights instead of --model/--baseline")  # fmt: skip
    p.add_argument("--contexts", type=int, nargs="+")
    p.add_argument("--decode-tokens", type=int, help="timed decode steps per context")
    p.add_argument("--warmup", type=int, help="untimed decode steps per context")
    p.add_argument("--repeats", type=int, help="prefill timings per context")
    p.add_argument("--decode-mode", choices=["online", "chunked"], help="TTT decode mode")
    p.add_argument("--seed", type=int)
    p.set_defaults(run=_cmd_latency)

    p = sub.add_parser("bench-dual-primal", help="dual vs anchored primal vs online op timing")
    _add_output_flags(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["fp32", "bf16"])
    for flag in ("--batch", "--heads", "--head-dim", "--chunk", "--seq-len"):
        p.add_argument(flag, type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ops", nargs="+", choices=["dual", "primal_anchored", "online"])
    p.add_argument("--modes", nargs="+", choices=["forward", "forward_backward"])
    p.add_argument(
        "--backend",
        dest="backends",
        nargs="+",
        choices=list(OPS_BACKENDS),
        help="dual-form implementation(s), timed side by side (default: auto)",
    )
    p.add_argument(
        "--compare-fla",
        action="store_true",
        default=None,
        help="also time flash-linear-attention's TTT-Linear (needs the fla package)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--assert-speedup", type=float, metavar="X",
                   help="exit 1 when the forward dual/primal speedup is below X")  # fmt: skip
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("compare", help="runs side by side: one table and one figure")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="bring-up or results directories; the first is the reference")  # fmt: skip
    _add_output_flags(p)
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("generate", help="text in, text out (streamed); --interactive: multi-turn")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--prompt", help="the text to continue (first turn with --interactive)")
    p.add_argument("--interactive", action="store_true", help="read turns from stdin until EOF")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--decode-mode", choices=["online", "chunked"])
    p.set_defaults(run=_cmd_generate)
    return parser


def _describe(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return f"invalid config: {validation_summary(error)}"
    return str(error)


def _run_dir_written(args: argparse.Namespace) -> Path | None:
    """The train_stage run dir this command will write into: `--out` inside one, or the
    default output next to a run dir `--model`. None when it writes elsewhere (or nowhere)."""
    if not hasattr(args, "out"):  # generate writes no files
        return None
    if args.out is not None:
        return enclosing_run_dir(args.out)
    model = getattr(args, "model", None)
    return Path(model) if model is not None and is_run_dir(Path(model)) else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        (EvalInputError, DataStageError, ValidationError, RunDirBusy),
        describe=_describe,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except SpeedupBelowThreshold as e:
        print(f"eval_stage {args.command}: {e}", file=sys.stderr)
        return EXIT_BELOW_THRESHOLD
