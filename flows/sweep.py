"""`python -m flows sweep`: search train.* settings with Optuna and rank the points by val loss.

Every point is the bring-up `flows run --preset P --mixer M --set …` would train, with the
trial's values as extra `--set` keys. The tokenizer and shards are built once under `<out>` and
shared, every point starts from the same seed on the same rows, and each trains through the same
`train_stage` command the pipeline launches (`<out>/points/<point>/`, its log in `train.log`).
Val loss is train_stage's final evaluation: the same fixed validation rows for every point, so
axes that would change the data or those rows are refused before any work.

The search (`flows.search`): `--grid` axes with Optuna's grid sampler, or `--range` axes with
TPE and `--trials N`; the median pruner stops a point whose periodic val loss
(`train.eval_every`) is worse than the median of the earlier trials at that step. The study is
`<out>/optuna.db`; rerunning the same command continues it, resuming an interrupted point from
its latest checkpoint. A point finished by any earlier sweep into `<out>` is read back, not
retrained. This command trains in this process, one point at a time unless `--concurrency`
says more; the `sweep` deployment runs each trial as a flow run on the work pool
(`flows.sweep_flow`). Writes `sweep.json`, `sweep.md` (sorted by val loss) and `sweep.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from data_stage import build_shards, read_manifest, train_tokenizer
from flows.config import PipelineConfig
from flows.fingerprint import corpus_fingerprint, digest
from flows.request import BringupRequest, InvalidRequest, resolve
from flows.search import SearchSpec, SweepError, parse_grid, parse_ranges
from flows.sweep_report import write_outputs
from flows.torchrun import NOT_RETRYABLE, ProcessFailed, Terminated, run_streaming, sigterm_raises
from flows.train_run import LAUNCH_FILE, prepare_launch, train_run_key
from flows.trials import PRUNE_FILE, STOP_FILE, TrialLoop
from stage_common import CliParser, output_dir_problem, run_cli
from train_stage import TrainConfig
from ttt_core import atomic_write_text, parse_assignments

RESULT_FILE, DATA_KEY = "sweep_point.json", "data.key"
EXIT_INTERRUPTED = 143  # as train_stage: stopped by SIGTERM/SIGINT, rerun to resume
# What fixes the validation rows train_stage evaluates: a point must not change them.
VAL_FIELDS = ("eval_batches", "max_batch_size", "max_seq_len")


class Point(BaseModel):
    """One point: its values (dotted key -> the value the run trains with) and that run."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    params: dict[str, Any]
    train: TrainConfig


class Stopped(Exception):
    """The sweep asked this point's training to stop: its pruner (`PRUNE_FILE`, status
    pruned) or a signal to the sweep (`STOP_FILE`, status interrupted: resumed by a rerun)."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class Sweep(BaseModel):
    """A validated sweep: its search, the shared data configs, the first point (what every
    other must match: data and validation rows) and each axis's resolved values or bounds."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    out: Path
    spec: SearchSpec
    base: PipelineConfig
    first: Point
    axes: dict[str, list[Any]]
    command: str

    def point_for(self, params: dict[str, Any]) -> Point:
        """The point of one trial's values (SweepError, one line, when it is not valid or
        changes the data or the validation rows)."""
        point, cfg = _resolve_point(self.spec, params, self.out)
        if _data_settings(cfg) != _data_settings(self.base):
            raise SweepError(f"point {point.name} changes the data; sweep train.* settings only")
        if _val_settings(point.train) != _val_settings(self.first.train):
            raise SweepError(
                f"point {point.name} changes the validation rows ({', '.join(VAL_FIELDS)} differ "
                f"from point {self.first.name}); their val losses would not be comparable"
            )
        return point

    def run_key(self, point: Point) -> str:
        return train_run_key(point.train, self.base.nproc)

    def read_record(self, point: Point, wall_s: float) -> dict[str, Any]:
        """What a trial's files say: its RESULT_FILE when it ran to the end (completed or
        diverged), else its train_summary's numbers (status stopped, or interrupted)."""
        result = point.train.run_dir / RESULT_FILE
        if result.is_file():
            record = json.loads(result.read_text())
            if record["key"] == self.run_key(point):
                return {**record, "cached": False}
        numbers = _train_numbers(point.train.run_dir)
        status = numbers.pop("status") or "interrupted"
        return {"name": point.name, "params": point.params, "status": status,
                "key": self.run_key(point), "wall_s": wall_s, **numbers}  # fmt: skip


def make_spec(**fields: Any) -> SearchSpec:
    """A SearchSpec, or SweepError naming the field that is wrong."""
    try:
        return SearchSpec(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise SweepError(
            f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"
        ) from None


def point_name(params: dict[str, Any]) -> str:
    """A folder name from the values as given: `lr=1e-3_model.eta_base=0.01` (the `train.`
    dropped; floats sampled by TPE to 4 significant digits; characters unsafe in a path, such
    as `/` or spaces, become `-`)."""
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in params.items()}
    text = "_".join(f"{k.removeprefix('train.')}={v}" for k, v in shown.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


def _lookup(train: dict[str, Any], key: str) -> Any:
    """The resolved value of dotted `train.*` key `key` in a dumped TrainConfig (so `1e-3`,
    which YAML reads as a string, is recorded as the float the run trained with)."""
    value: Any = train
    for part in key.split(".")[1:]:
        value = value[part]
    return value


def _data_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """What the shared tokenizer and shards are built from (paths aside)."""
    tok = cfg.tokenizer_config().model_dump(mode="json", exclude={"out"})
    shards = cfg.shard_config().model_dump(mode="json", exclude={"out", "tokenizer", "workers"})
    return {"tokenizer": tok, "shards": shards}


def _val_settings(train: TrainConfig) -> dict[str, Any]:
    return {f: getattr(train, f) for f in VAL_FIELDS}


def _resolve_point(
    spec: SearchSpec, params: dict[str, Any], out: Path
) -> tuple[Point, PipelineConfig]:
    name = point_name(params)
    request = BringupRequest(preset=spec.preset, mixer=spec.mixer,
                             overrides={**spec.sets, **params})  # fmt: skip
    try:
        cfg = resolve(request, out)
    except InvalidRequest as e:
        raise SweepError(f"point {name}: {e}") from None
    train = cfg.train_config(out / "shards").model_copy(update={"run_dir": out / "points" / name})
    resolved = {key: _lookup(train.model_dump(mode="json"), key) for key in params}
    return Point(name=name, params=resolved, train=train), cfg


def plan(spec: SearchSpec, out: Path, command: str = "") -> Sweep:
    """Resolve the first point and check every probe (`SearchSpec.probe_params`: the whole
    grid, or each range's bounds) against it: same data, same validation rows, distinct names.
    Raises `SweepError`, one line, before anything is written."""
    out = out.expanduser().resolve()
    probes = spec.probe_params()
    first, base = _resolve_point(spec, probes[0], out)
    sweep = Sweep(out=out, spec=spec, base=base, first=first, axes={}, command=command)
    points = [first] + [sweep.point_for(params) for params in probes[1:]]
    names = [p.name for p in points]
    if len(set(names)) != len(names) and not spec.ranges:
        twice = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"two points are both named {twice!r}; give distinct values")
    axes = {k: list(dict.fromkeys(p.params[k] for p in points)) for k in spec.axes()}
    return sweep.model_copy(update={"axes": axes})


# --- shared data ------------------------------------------------------------------------------
def data_key(cfg: PipelineConfig) -> str:
    """Digest of the corpus content and the tokenizer/shard settings the points share."""
    return digest("sweep-data", corpus_fingerprint(cfg.corpus), _data_settings(cfg))


def build_data(sweep: Sweep, log: Callable[[str], None]) -> None:
    """The tokenizer and shards every point trains on, built once under `<out>` (and reused by a
    rerun over the same data: `data.key` holds the digest of the corpus and data settings)."""
    out, base = sweep.out, sweep.base
    key = data_key(base)
    key_file, tok_dir, shard_dir = out / DATA_KEY, out / "tokenizer", out / "shards"
    if key_file.is_file() and (shard_dir / "manifest.json").is_file():
        log(f"[sweep] data: reusing {tok_dir} and {shard_dir}")
        return
    atomic_write_text(key_file, key + "\n")
    if not (tok_dir / "tokenizer.json").is_file():
        log(f"[sweep] data: training the tokenizer into {tok_dir}")
        train_tokenizer(base.tokenizer_config().model_copy(update={"out": tok_dir}))
    if shard_dir.exists():  # left by an interrupted build of this same data
        shutil.rmtree(shard_dir)
    log(f"[sweep] data: building shards into {shard_dir}")
    shards = base.shard_config().model_copy(update={"out": shard_dir, "tokenizer": tok_dir})
    build_shards(shards)


def check_out(sweep: Sweep) -> None:
    """Refuse an `--out` that is not a directory we can write, or that holds something else
    than a sweep over this data (before any work)."""
    out = sweep.out
    problem = output_dir_problem(out)
    if problem:
        raise SweepError(problem)
    key_file = out / DATA_KEY
    if key_file.is_file():
        if key_file.read_text().strip() != data_key(sweep.base):
            raise SweepError(
                f"{out} holds a sweep over other data (tokenizer/shard settings or corpus "
                "differ); pass another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise SweepError(f"{out} is not empty and holds no sweep ({DATA_KEY}); pass another --out")


# --- points -----------------------------------------------------------------------------------
def finished_points(out: Path) -> dict[str, dict[str, Any]]:
    """run key -> record of every point finished under `<out>/points` (by any earlier sweep
    into `out`, whatever its grid): a point with the same key is the same training run."""
    records = (json.loads(f.read_text()) for f in sorted(out.glob(f"points/*/{RESULT_FILE}")))
    return {r["key"]: r for r in records}


def train_point(
    point: Point,
    nproc: int,
    grace_s: float,
    log: Callable[[str], None],
    mlflow: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train `point` (or resume it) through the pipeline's train_stage command and return how it
    ended: status completed, diverged, stopped (at `train.stop_at`), pruned or interrupted (its
    run dir got `PRUNE_FILE` or `STOP_FILE` from the sweep: training stops at the next output
    line, saving a checkpoint) or failed. Completed and diverged runs write RESULT_FILE: a rerun would repeat
    them. `mlflow`: train_stage's `--mlflow-*` values; None trains without MLflow."""
    run_dir = point.train.run_dir
    command = prepare_launch(point.train, nproc, False, grace_s, log, mlflow=mlflow)
    markers = ((run_dir / PRUNE_FILE, "pruned"), (run_dir / STOP_FILE, "interrupted"))
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    status, note = "completed", None

    def on_line(line: str, train_log) -> None:
        print(line, file=train_log, flush=True)
        for marker, why in markers:
            if marker.is_file():
                raise Stopped(why, marker.read_text().strip())

    with open(run_dir / "train.log", "a") as train_log:
        try:
            run_streaming(
                command,
                lambda line: on_line(line, train_log),
                env=env,
                grace_s=grace_s,
                what=f"train_stage ({point.name})",
                launch_file=run_dir / LAUNCH_FILE,
            )
        except ProcessFailed as e:
            status = NOT_RETRYABLE.get(e.exit_code, "failed")
            log(f"[sweep] {point.name}: {status}: {' | '.join(e.explanation[-3:])}")
        except Stopped as e:
            status, note = e.status, e.reason
            log(f"[sweep] {point.name}: {status} ({note})")
    numbers = _train_numbers(run_dir)
    if status == "completed":  # train_stage exits 0 also when it stopped at `stop_at`
        status = numbers.pop("status") or "failed"
    numbers.pop("status", None)
    record = {
        "name": point.name,
        "params": point.params,
        "status": status,
        "key": train_run_key(point.train, nproc),
        "wall_s": time.perf_counter() - start,
        **numbers,
        **({"note": note} if note else {}),
    }
    if status in ("completed", "diverged"):
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(record, indent=2))
    return record


def _train_numbers(run_dir: Path) -> dict[str, Any]:
    """Status, val loss and last train loss from train_summary.json; the median tokens/s of
    the logged steps (metrics.jsonl); steps trained."""
    summary_file, metrics_file = run_dir / "train_summary.json", run_dir / "metrics.jsonl"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    rates = []
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            rate = json.loads(line).get("tokens_per_s") if line.strip() else None
            if rate is not None:
                rates.append(rate)
    return {
        "status": summary.get("status"),  # completed, or stopped (at `train.stop_at`)
        "val_loss": summary.get("val_loss") if summary.get("status") == "completed" else None,
        "train_loss": summary.get("final_loss"),
        "steps": summary.get("steps"),
        "resumed_from_step": summary.get("resumed_from_step"),
        "tokens_per_s": statistics.median(rates) if rates else None,
    }


# --- command ----------------------------------------------------------------------------------
class LocalLauncher:
    """Trials trained by threads of this process (each a train_stage process group)."""

    def __init__(self, sweep: Sweep, concurrency: int, log: Callable[[str], None]):
        self.sweep, self.log = sweep, log
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="trial")
        self.training: dict[Future, Point] = {}

    def start(self, number: int, params: dict[str, Any], point: Point) -> Future:
        base = self.sweep.base
        future = self.pool.submit(train_point, point, base.nproc, base.stop_grace_s, self.log)
        self.training[future] = point
        future.add_done_callback(lambda done: self.training.pop(done, None))
        return future

    def stop(self) -> None:
        """Ask every point still training to stop (each saves a checkpoint) and wait for them."""
        for point in list(self.training.values()):
            (point.train.run_dir / STOP_FILE).write_text("the sweep got a signal\n")
        self.pool.shutdown(wait=True)

    def outcome(self, handle: Future) -> str | None:
        if not handle.done():
            return None
        error = handle.exception()
        return "" if error is None else f"{type(error).__name__}: {error}"

    def attrs(self, handle: Future) -> dict[str, str]:
        return {}

    def adopt(self, attrs: dict[str, Any]) -> None:
        return None  # a trial left by a killed process died with it


def prepare_data(sweep: Sweep, log: Callable[[str], None]) -> None:
    """Build (or reuse) the shared data and refuse a val split no point could be ranked on."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    build_data(sweep, log)
    val_rows = read_manifest(sweep.out / "shards").split("val").rows
    if val_rows == 0:
        raise SweepError(
            "the shards have no validation rows, so no point could be ranked; raise "
            "val_fraction or use a larger corpus"
        )
    train = sweep.first.train
    if val_rows < train.eval_batches * train.max_batch_size:
        log(f"[sweep] note: the val split has {val_rows} rows; every point is measured on them")


def best_line(sweep: Sweep, records: list[dict[str, Any]]) -> str:
    from flows.sweep_report import ranked

    best = ranked(records)[0] if records else None
    if best is None or best["val_loss"] is None:
        return f"[sweep] no point completed yet; table {sweep.out / 'sweep.md'}"
    return (f"[sweep] best: {best['name']} val loss {best['val_loss']:.4f}; "
            f"table {sweep.out / 'sweep.md'}")  # fmt: skip


def run_sweep(sweep: Sweep, concurrency: int = 1, log: Callable[[str], None] = print) -> int:
    """Build the data once, run the study's trials here (`concurrency` at once), writing the
    outputs after each one (so an interrupted sweep still leaves its table). 0 when the target
    is met and every trial completed or was pruned, else 1."""
    prepare_data(sweep, log)
    launcher = LocalLauncher(sweep, concurrency, log)
    loop = TrialLoop(sweep, launcher, concurrency, log,
                     on_record=lambda records: write_outputs(sweep, records))  # fmt: skip
    try:
        with sigterm_raises():
            records = loop.run(lambda: finished_points(sweep.out))
    except BaseException:  # SIGTERM, Ctrl-C: the trials left RUNNING resume on a rerun
        launcher.stop()
        raise
    write_outputs(sweep, records)
    log(best_line(sweep, records))
    return loop.status_code()


def sweep_command(args: argparse.Namespace) -> str:
    """The command line that reruns (continues) this sweep, for the table."""
    argv = ["python", "-m", "flows", "sweep", "--preset", args.preset]
    argv += ["--mixer", args.mixer] if args.mixer else []
    for flag in ("set", "grid", "range"):
        for item in getattr(args, flag) or []:
            argv += [f"--{flag}", item]
    argv += ["--sampler", args.sampler, "--pruner", args.pruner, "--seed", str(args.seed)]
    argv += ["--trials", str(args.trials)] if args.trials else []
    return shlex.join([*argv, "--out", str(args.out)])


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    try:
        sets = parse_assignments(args.set or [])
    except (ValueError, yaml.YAMLError) as e:
        raise SweepError(" ".join(str(e).split())) from None
    return make_spec(
        preset=args.preset, mixer=args.mixer, sets=sets, grid=parse_grid(args.grid or []),
        ranges=parse_ranges(args.range or []), sampler=args.sampler, trials=args.trials,
        pruner=args.pruner, seed=args.seed,
    )  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    def body() -> int:
        if args.concurrency < 1:
            raise SweepError(f"--concurrency must be at least 1, got {args.concurrency}")
        sweep = plan(spec_from_args(args), args.out, sweep_command(args))
        check_out(sweep)
        try:
            return run_sweep(sweep, args.concurrency)
        except (Terminated, KeyboardInterrupt):
            print(
                f"flows sweep: stopped by a signal; rerun `{sweep.command}` to resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED

    return run_cli("flows sweep", body, (SweepError, InvalidRequest), label="refused")


def main(argv: list[str] | None = None) -> int:
    from flows.cli import add_sweep_args

    p = CliParser(prog="python -m flows sweep", description=__doc__.splitlines()[0])
    add_sweep_args(p)
    return cmd_sweep(p.parse_args(argv))
