"""`python -m flows`: bring-ups in this process, or on a Prefect work pool (deploy, up).

`run|long-context|deploy|up|sweep`: one bring-up in-process, the long-context comparison, the
deployments on a work pool, the whole stack, or an Optuna search of train.* settings on shared data.

Prefect is imported only after `prepare_env` has pointed it at the run root's state dir, and
the stages only by the commands that use them: parsing, `--help` and `up` (a supervisor that only
starts and stops the others) load neither torch nor MLflow nor Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from flows.choices import DEFAULT_PRESET, LONG_CONTEXT_PRESET, LONG_CONTEXT_SEEDS, PresetName
from flows.env import MLFLOW_URI_ENV, RUN_ROOT_ENV, UI_ENV, prepare_env
from stage_common import CliParser, positive_int, read_config_file
from ttt_core import Family, flatten_dotted, parse_assignments

if TYPE_CHECKING:
    from flows.config import PipelineConfig
    from flows.request import BringupRequest

PRESETS = sorted(get_args(PresetName))

EXIT_BAD_INPUT = 2


def load_request(args: argparse.Namespace) -> tuple[BringupRequest, PipelineConfig]:
    """The request `--preset/--mixer/--config/--set` make and the bring-up it resolves to under
    `--run-root`, exactly as the `bringup` flow will resolve it; a bad value exits 2 naming it."""
    from flows.request import BringupRequest, resolve

    try:
        from_file = flatten_dotted(read_config_file(args.config)) if args.config else {}
        try:
            sets = parse_assignments(args.set or [])
        except ValueError as e:
            raise ValueError(f"--set {e}") from None
        overrides = {**from_file, **sets}
        request = BringupRequest(preset=args.preset, mixer=args.mixer, overrides=overrides)
        return request, resolve(request, args.run_root, args.mlflow_uri)
    except ValueError as e:  # InvalidRequest and a bad --set both name the key
        print(f"flows: invalid config: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET)
    p.add_argument("--mixer", choices=get_args(Family), help="default: the preset's")
    p.add_argument("--run-root", type=Path, default=Path("runs"))
    p.add_argument("--mlflow-uri", help="default: sqlite:///<run_root>/mlflow.db")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        help="PipelineConfig overrides as YAML (nested or dotted keys); --set applies over it",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a PipelineConfig field (dotted key, YAML value)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    request, cfg = load_request(args)
    prepare_env(cfg.run_root)
    os.environ[RUN_ROOT_ENV] = str(cfg.run_root)
    if args.mlflow_uri:
        os.environ[MLFLOW_URI_ENV] = args.mlflow_uri
    from flows.bringup import bringup

    state = bringup(**request.model_dump(), refresh=args.refresh, return_state=True)
    print(json.dumps({"state": state.name, "run_dir": str(cfg.run_dir)}))
    return 0 if state.is_completed() else 1


def cmd_long_context(args: argparse.Namespace) -> int:
    run_root = Path(args.run_root).expanduser().resolve()
    prepare_env(run_root)
    os.environ[RUN_ROOT_ENV] = str(run_root)
    if args.mlflow_uri:
        os.environ[MLFLOW_URI_ENV] = args.mlflow_uri
    from flows.long_context import long_context, seed_requests

    try:  # the same checks the flow makes, before Prefect starts anything
        overrides = parse_assignments(args.set or [])
        seed_requests(args.preset, args.seeds, args.reference, args.families, overrides)
    except ValueError as e:  # InvalidRequest and a bad --set
        print(f"flows long-context: invalid request: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    state = long_context(preset=args.preset, seeds=args.seeds, reference=args.reference,
                         families=args.families, overrides=overrides, refresh=args.refresh,
                         return_state=True)  # fmt: skip
    print(json.dumps({"state": state.name, "run_root": str(run_root)}))
    return 0 if state.is_completed() else 1


def cmd_deploy(args: argparse.Namespace) -> int:
    run_root = Path(args.run_root).expanduser().resolve()
    prepare_env(run_root)
    from flows.deploy import AUTOMATION_NAME, POOL_NAME, deploy
    from flows.slots import TRAIN_SLOTS, default_train_slots

    slots = args.train_slots or default_train_slots()
    names = deploy(run_root, args.mlflow_uri, os.environ.get(UI_ENV), args.resume_every,
                   args.resume_paused, args.pool_limit, slots)  # fmt: skip
    print(f"[flows] work pool {POOL_NAME!r} (at most {args.pool_limit} flow runs at once), "
          f"{TRAIN_SLOTS!r} = {slots}, automation {AUTOMATION_NAME!r}; deployments "
          f"{', '.join(names)} (resume every {args.resume_every:g}s, "
          f"{'paused' if args.resume_paused else 'active'}); run them with: "
          f"prefect worker start --pool {POOL_NAME}", flush=True)  # fmt: skip
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from flows.up import up

    run_root = Path(args.run_root).expanduser().resolve()
    return up(run_root, args.prefect_port, args.mlflow_port, deploy_flags(args))


def deploy_flags(args: argparse.Namespace) -> list[str]:
    """The `flows deploy` flags that repeat `args`' deployment options (for `flows up`)."""
    flags = ["--resume-every", str(args.resume_every), "--pool-limit", str(args.pool_limit),
             "--resume-paused" if args.resume_paused else "--resume-active"]  # fmt: skip
    return flags + (["--train-slots", str(args.train_slots)] if args.train_slots else [])


def add_deploy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-root", type=Path, default=Path("runs"), help="where bring-ups run; resume scans it"
    )
    p.add_argument("--resume-every", type=float, default=600.0, metavar="SECONDS",
                   help="interval of the resume/resume schedule (default: %(default)g)")  # fmt: skip
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume-paused",
        dest="resume_paused",
        action="store_true",
        help="register the resume schedule paused",
    )
    resume.add_argument(
        "--resume-active",
        dest="resume_paused",
        action="store_false",
        help="run the resume schedule (default)",
    )
    p.add_argument("--pool-limit", type=positive_int, default=4, metavar="N",
                   help="flow runs the work pool runs at once (default: %(default)s)")  # fmt: skip
    p.add_argument("--train-slots", type=positive_int, metavar="N",
                   help="trainings at once, the train-slots limit (default: GPUs, 1 on CPU)")  # fmt: skip


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The sweep's flags on `p` (the `sweep` subcommand, or `flows.sweep` standalone)."""
    p.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET)
    p.add_argument("--mixer", choices=get_args(Family), help="default: the preset's")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a PipelineConfig key for every point"
    )
    p.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2,...",
        help="a train.* PipelineConfig key and its values (repeat for more axes)",
    )
    p.add_argument(
        "--range",
        action="append",
        metavar="KEY=LOW..HIGH[:log][:int]",
        help="a train.* key searched between two bounds (with --sampler tpe)",
    )
    p.add_argument(
        "--sampler",
        choices=("grid", "tpe"),
        default="grid",
        help="grid: every combination of the --grid values once; tpe: --trials points chosen "
        "by Optuna's TPE from the --grid values and --range bounds",
    )
    p.add_argument("--trials", type=int, help="how many points TPE trains")
    p.add_argument(
        "--pruner",
        choices=("median", "none"),
        default="median",
        help="median: stop a point whose periodic val loss (train.eval_every) is worse than the "
        "median of earlier trials at that step",
    )
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument(
        "--concurrency", type=int, default=1, help="points trained at once in this process"
    )
    p.add_argument("--out", type=Path, required=True, help="the sweep's directory")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from flows.sweep import cmd_sweep as run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m flows", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bringup flow in this process")
    add_config_args(run)
    run.add_argument("--refresh", action="store_true", help="rerun every stage (ignore cache)")
    run.set_defaults(func=cmd_run)
    deploy = sub.add_parser("deploy", help="create the work pool, train-slots limit, "
                            "deployments and restart automation (PREFECT_API_URL's server)")  # fmt: skip
    deploy.description = ("Create or update, on the Prefect server PREFECT_API_URL names: the "
                          "process work pool ttt-local, the train-slots concurrency limit, the "
                          "deployments bringup, resume, long-context and serve (from this "
                          "project's source) and the restart automation. A worker runs them: "
                          "prefect worker start --pool ttt-local (flows up starts one).")  # fmt: skip
    add_deploy_args(deploy)
    deploy.add_argument("--mlflow-uri", help="default: sqlite:///<run_root>/mlflow.db")
    deploy.set_defaults(func=cmd_deploy)
    up = sub.add_parser("up", help="Prefect server + MLflow server + deploy + a worker, "
                        "on 127.0.0.1")  # fmt: skip
    add_deploy_args(up)
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.set_defaults(func=cmd_up)
    lc = sub.add_parser("long-context", help="pretrain, extend and compare every family at "
                        "growing lengths, once per seed (the long-context flow, in this process)")  # fmt: skip
    lc.description = ("One bring-up per seed: the reference family and the others pretrained at "
                      "the preset's seq_len, extended to its extend_seq_len and compared on the "
                      "same val sequences at growing lengths; then the seeds side by side in "
                      "<run-root>/<preset>-seeds/ (docs/long_context.md).")  # fmt: skip
    lc.add_argument("--preset", choices=PRESETS, default=LONG_CONTEXT_PRESET,
                    help="a preset with extend_seq_len and long_context (default: %(default)s)")  # fmt: skip
    lc.add_argument("--seeds", type=int, nargs="+", default=list(LONG_CONTEXT_SEEDS),
                    help="one bring-up per seed (init and data order; default: 0 1)")  # fmt: skip
    lc.add_argument("--reference", choices=get_args(Family), default="attention",
                    help="the family every other is compared against (default: attention)")  # fmt: skip
    lc.add_argument("--families", choices=get_args(Family), nargs="+",
                    help="compared with the reference (default: the preset's controls)")  # fmt: skip
    lc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a PipelineConfig field of every seed's bring-up")  # fmt: skip
    lc.add_argument("--run-root", type=Path, default=Path("runs"))
    lc.add_argument("--mlflow-uri", help="default: sqlite:///<run_root>/mlflow.db")
    lc.add_argument("--refresh", action="store_true", help="rerun every stage (ignore cache)")
    lc.set_defaults(func=cmd_long_context)
    add_sweep_args(
        sub.add_parser("sweep", help="search train.* settings with Optuna on shared data")
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
