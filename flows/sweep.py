"""`python -m flows sweep`: train a grid of points over one preset's data and rank them by val loss.

Every point is the bring-up `flows run --preset P --mixer M --set …` would train, with the grid's
values as extra `--set` keys. The tokenizer and shards are built once under `<out>` and shared,
every point starts from the same seed on the same rows, and each trains through the same
`train_stage` command the pipeline launches (`<out>/points/<point>/`, its log in `train.log`).
Val loss is train_stage's final evaluation: the same fixed validation rows for every point, so
grid axes that would change the data or those rows are refused before any work.

Rerunning the same command skips finished points and resumes an interrupted one from its latest
checkpoint; a point whose config changed is moved aside and retrained. Writes `sweep.json`,
`sweep.md` (sorted by val loss) and `sweep.png` (val loss against lr, else the first axis that
varies; one line per value of the others).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from data_stage import build_shards, read_manifest, train_tokenizer
from flows.config import PipelineConfig
from flows.fingerprint import corpus_fingerprint, digest
from flows.request import BringupRequest, InvalidRequest, resolve
from flows.torchrun import NOT_RETRYABLE, ProcessFailed, Terminated, run_streaming
from flows.train_run import LAUNCH_FILE, prepare_launch, train_run_key
from stage_common import CliParser, output_dir_problem, run_cli
from train_stage import TrainConfig
from ttt_core import atomic_write_text, parse_assignments

RESULT_FILE, DATA_KEY = "sweep_point.json", "data.key"
EXIT_INTERRUPTED = 143  # as train_stage: stopped by SIGTERM/SIGINT, rerun to resume
# What fixes the validation rows train_stage evaluates: a point must not change them.
VAL_FIELDS = ("eval_batches", "max_batch_size", "max_seq_len")


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message is one line naming the key."""


class Point(BaseModel):
    """One grid point: its values (dotted key -> the value the run trains with) and that run."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    params: dict[str, Any]
    train: TrainConfig


class Sweep(BaseModel):
    """A validated sweep: the shared data configs and every point's training config."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    out: Path
    base: PipelineConfig
    axes: dict[str, list[Any]]
    points: list[Point]
    command: str


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["train.lr=1e-3,3e-3"]` -> `{"train.lr": [0.001, 0.003]}`; each value parsed as YAML."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-3,3e-3)")
        if key in axes:
            raise SweepError(f"--grid {key!r} given twice")
        try:
            values = [yaml.safe_load(v) for v in text.split(",")]
        except yaml.YAMLError as e:
            raise SweepError(f"--grid {item!r}: {' '.join(str(e).split())}") from None
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"--grid {key!r}: repeated values {values}")
        axes[key] = values
    if not axes:
        raise SweepError("give at least one --grid KEY=V1,V2,...")
    return axes


def point_name(params: dict[str, Any]) -> str:
    """A folder name from the values as given: `lr=1e-3_model.eta_base=0.01` (the `train.`
    dropped; characters unsafe in a path, such as `/` or spaces, become `-`)."""
    text = "_".join(f"{k.removeprefix('train.')}={v}" for k, v in params.items())
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


def plan(
    preset: str,
    mixer: str | None,
    sets: dict[str, Any],
    axes: dict[str, list[Any]],
    out: Path,
    command: str = "",
) -> Sweep:
    """Resolve every point (as `flows run --preset … --set …` would) and check that they share
    the data and the validation rows. Raises `SweepError`/`InvalidRequest`, one line, before
    anything is written."""
    out = out.expanduser().resolve()
    for key in axes:
        if key in sets:
            raise SweepError(f"{key!r} is both a --grid axis and a --set")
        if key == "mixer" or not key.startswith("train."):
            raise SweepError(
                f"--grid {key!r}: only train.* keys can be swept (the tokenizer and shards are "
                "shared by every point; run another sweep for another data setting or mixer)"
            )
    points: list[Point] = []
    base: PipelineConfig | None = None
    for values in itertools.product(*axes.values()):
        params = dict(zip(axes, values, strict=True))
        request = BringupRequest(preset=preset, mixer=mixer, overrides={**sets, **params})
        try:
            cfg = resolve(request, out)
        except InvalidRequest as e:
            raise SweepError(f"point {point_name(params)}: {e}") from None
        name = point_name(params)
        if any(p.name == name for p in points):
            raise SweepError(f"two points are both named {name!r}; give distinct values")
        train = cfg.train_config(out / "shards").model_copy(
            update={"run_dir": out / "points" / name}
        )
        if base is None:
            base = cfg
        else:
            first = points[0]
            if _data_settings(cfg) != _data_settings(base):
                raise SweepError(f"point {name} changes the data; sweep train.* settings only")
            if _val_settings(train) != _val_settings(first.train):
                raise SweepError(
                    f"point {name} changes the validation rows ({', '.join(VAL_FIELDS)} differ "
                    f"from point {first.name}); their val losses would not be comparable"
                )
        resolved = {key: _lookup(train.model_dump(mode="json"), key) for key in params}
        points.append(Point(name=name, params=resolved, train=train))
    assert base is not None  # parse_grid gives at least one axis with at least one value
    resolved_axes = {k: list(dict.fromkeys(p.params[k] for p in points)) for k in axes}
    return Sweep(out=out, base=base, axes=resolved_axes, points=points, command=command)


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
    finished: dict[str, dict[str, Any]] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Train `point` (or resume it) through the pipeline's train_stage command; its record.
    A run that ended earlier (`finished`, by run key) is read back, not retrained: completed,
    or diverged (which a rerun would repeat). `label` names the point in progress lines."""
    run_dir = point.train.run_dir
    key = train_run_key(point.train, nproc)
    done = (finished or {}).get(key)
    if done is not None:
        return {**done, "name": point.name, "params": point.params, "cached": True}
    label = label or point.name
    log(f"[sweep] {label}: training ({run_dir}/train.log)")
    command = prepare_launch(point.train, nproc, False, grace_s, log, mlflow=None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    status = "completed"
    with open(run_dir / "train.log", "a") as train_log:
        try:
            run_streaming(
                command,
                lambda line: print(line, file=train_log, flush=True),
                env=env,
                grace_s=grace_s,
                what=f"train_stage ({point.name})",
                launch_file=run_dir / LAUNCH_FILE,
            )
        except ProcessFailed as e:
            status = NOT_RETRYABLE.get(e.exit_code, "failed")
            log(f"[sweep] {label}: {status}: {' | '.join(e.explanation[-3:])}")
    numbers = _train_numbers(run_dir)
    if status == "completed":  # train_stage exits 0 also when it stopped at `stop_at`
        status = numbers.pop("status") or "failed"
    numbers.pop("status", None)
    record = {
        "name": point.name,
        "params": point.params,
        "status": status,
        "key": key,
        "wall_s": time.perf_counter() - start,
        **numbers,
    }
    if status in ("completed", "diverged"):
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(record, indent=2))
    return {**record, "cached": False}


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


# --- outputs ----------------------------------------------------------------------------------
def ranked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points with a val loss first, lowest first; the others (diverged, failed) after."""
    return sorted(records, key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0))


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(sweep: Sweep, records: list[dict[str, Any]]) -> str:
    """A Markdown table of every point sorted by val loss (the trainer's estimate on its
    `eval_batches` val batches, the same rows for every point), with the command that made it."""
    axes = list(sweep.axes)
    batches = sweep.points[0].train.eval_batches if sweep.points else 0
    val = f"val loss (trainer, {batches} val batches)"
    head = [*axes, val, "train loss (last step)", "tokens/s", "wall s", "status"]
    lines = [
        f"# Sweep: {sweep.base.preset} / {sweep.base.mixer}",
        "",
        f"`{sweep.command}`" if sweep.command else "",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in ranked(records):
        cells = [str(r["params"][a]) for a in axes]
        cells += [
            _fmt(r["val_loss"], ".4f"),
            _fmt(r["train_loss"], ".4f"),
            _fmt(r["tokens_per_s"], ",.0f"),
            _fmt(r["wall_s"], ".0f"),
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sweep: Sweep, records: list[dict[str, Any]], path: Path) -> Path:
    """Val loss against the lr axis (else the first axis with more than one value), one line
    per value of the other axes; log x when the values are positive and span 2x or more (lr
    grids are geometric). The y axis spans at least 0.2 nats, so noise between close points is
    not drawn as a cliff."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    varied = [a for a in ("train.lr", *sweep.axes) if len(sweep.axes.get(a, [])) > 1]
    x_axis = varied[0] if varied else next(iter(sweep.axes))
    others = [a for a in sweep.axes if a != x_axis]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r["params"][a] for a in others), []).append(r)
    losses = []
    for values, group in groups.items():
        done = sorted(
            (r for r in group if r["val_loss"] is not None), key=lambda r: r["params"][x_axis]
        )
        xs = [r["params"][x_axis] for r in done]
        ys = [r["val_loss"] for r in done]
        losses += ys
        label = ", ".join(
            f"{a.removeprefix('train.')}={v}" for a, v in zip(others, values, strict=True)
        )
        ax.plot(xs, ys, marker="o", label=label or None)
    x_values = [v for v in sweep.axes[x_axis] if isinstance(v, int | float)]
    if x_values and min(x_values) > 0 and max(x_values) / min(x_values) >= 2:
        ax.set_xscale("log")
    if losses:
        low, high = min(losses), max(losses)
        pad = max(0.0, 0.2 - (high - low)) / 2 + 0.02
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel(x_axis)
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title(f"{sweep.base.preset} / {sweep.base.mixer}: val loss per point")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_outputs(sweep: Sweep, records: list[dict[str, Any]]) -> list[Path]:
    """`sweep.json` (every point), `sweep.md` (sorted table) and `sweep.png`, each atomically."""
    out = sweep.out
    keep = ("name", "params", "status", "val_loss", "train_loss", "tokens_per_s", "wall_s",
            "steps", "resumed_from_step")  # fmt: skip
    data = {
        "preset": sweep.base.preset,
        "mixer": sweep.base.mixer,
        "axes": sweep.axes,
        "command": sweep.command,
        "points": [{k: r.get(k) for k in keep} for r in ranked(records)],
    }
    atomic_write_text(out / "sweep.json", json.dumps(data, indent=2))
    atomic_write_text(out / "sweep.md", markdown_table(sweep, records))
    tmp = out / ".sweep.png.tmp.png"
    plot(sweep, records, tmp)
    os.replace(tmp, out / "sweep.png")
    return [out / "sweep.json", out / "sweep.md", out / "sweep.png"]


# --- command ----------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> int:
    """Build the data once, train every point in order, write the outputs after each point (so
    an interrupted sweep still leaves its table). 0 when every point completed, else 1."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    build_data(sweep, log)
    val_rows = read_manifest(sweep.out / "shards").split("val").rows
    if val_rows == 0:
        raise SweepError(
            "the shards have no validation rows, so no point could be ranked; raise "
            "val_fraction or use a larger corpus"
        )
    if val_rows < sweep.points[0].train.eval_batches * sweep.points[0].train.max_batch_size:
        log(f"[sweep] note: the val split has {val_rows} rows; every point is measured on them")
    records: list[dict[str, Any]] = []
    total = len(sweep.points)
    for index, point in enumerate(sweep.points, 1):
        finished = finished_points(sweep.out)
        label = f"{index}/{total} {point.name}"
        grace = sweep.base.stop_grace_s
        record = train_point(point, sweep.base.nproc, grace, log, finished, label)
        records.append(record)
        earlier = " (finished earlier)" if record["cached"] else ""
        log(
            f"[sweep] {label}: {record['status']}{earlier}, "
            f"val loss {_fmt(record['val_loss'], '.4f')}, train loss "
            f"{_fmt(record['train_loss'], '.4f')}, {_fmt(record['tokens_per_s'], ',.0f')} tok/s, "
            f"{record['wall_s']:.0f} s"
        )
        write_outputs(sweep, records)
    best = ranked(records)[0]
    log(f"[sweep] best: {best['name']} val loss {_fmt(best['val_loss'], '.4f')}; "
        f"table {sweep.out / 'sweep.md'}")  # fmt: skip
    return 0 if all(r["status"] == "completed" for r in records) else 1


def sweep_command(args: argparse.Namespace) -> str:
    """The command line that reruns (resumes) this sweep, for the table."""
    argv = ["python", "-m", "flows", "sweep", "--preset", args.preset]
    argv += ["--mixer", args.mixer] if args.mixer else []
    for item in args.set or []:
        argv += ["--set", item]
    for item in args.grid:
        argv += ["--grid", item]
    return shlex.join([*argv, "--out", str(args.out)])


def cmd_sweep(args: argparse.Namespace) -> int:
    def body() -> int:
        try:
            sets = parse_assignments(args.set or [])
        except (ValueError, yaml.YAMLError) as e:
            raise SweepError(" ".join(str(e).split())) from None
        sweep = plan(
            args.preset,
            args.mixer,
            sets,
            parse_grid(args.grid),
            args.out,
            sweep_command(args),
        )
        check_out(sweep)
        try:
            return run_sweep(sweep)
        except Terminated:
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
