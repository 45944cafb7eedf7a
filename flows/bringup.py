"""The `bringup` flow: tokenizer → shards → train → bench → export → evaluate (→ extend → controls
→ compare → long_context, as configured), one MLflow parent run per flow run,
`<run_dir>/bringup.json` updated after every stage.

Before each cached task the flow asks the stage's outputs object (`TokenizerOutputs`,
`ShardOutputs`, `TrainOutputs`, `EvalOutputs`) whether its files are still on disk and whole; if
not (or with `refresh=True`) the task runs with `refresh_cache=True`, so a cache hit never
points at missing outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from data_stage import ShardOutputs, TokenizerOutputs
from eval_stage import (
    EvalOutputs,
    TrackingConfig,
    comparison_records,
    log_metrics_and_files,
    log_result,
    long_context_metrics,
    read_long_context,
    read_result,
    summarize_comparison,
    summarize_long_context,
    write_comparison,
)
from flows.choices import DEFAULT_PRESET, PresetName
from flows.commands import stage_commands
from flows.config import PipelineConfig
from flows.fingerprint import export_sha256, manifest_sha256
from flows.headline import (
    SPEEDUP,
    comparison,
    headline_rows,
    summary_lines,
    summary_markdown,
)
from flows.record import BringupRecord, acquire_lock, read_record, release_lock, write_record
from flows.registry import EXPORT_TAG, Measured, model_name, register_export
from flows.request import BringupRequest, InvalidRequest, resolve, served_location
from flows.tasks import (
    bench_task,
    eval_task,
    export_task,
    long_context_task,
    shards_task,
    tokenizer_task,
    train_task,
)
from flows.tracking import NOTE_TAG, Tracking, git_commit
from train_stage import TrainOutputs
from ttt_core import Family, PretrainedOutputs


def browsable(url: str | None) -> str | None:
    """`url` when a browser can open it, else None: without a configured UI (a temporary server)
    Prefect's `flow_run.ui_url` reads "None/flow-runs/flow-run/<id>"."""
    return url if url and url.startswith(("http://", "https://")) else None


def call_cached(task: Any, outputs_valid: bool, refresh: bool, **params: Any) -> tuple[Any, bool]:
    """Run `task`; a rerun is forced when its outputs are missing or `refresh`. Returns
    (result, whether it came from the cache)."""
    if refresh or not outputs_valid:
        task = task.with_options(refresh_cache=True)
    state = task(**params, return_state=True)
    return state.result(), state.name == "Cached"


def train_note(result: dict[str, Any], seq_len: int, init_from: str | None) -> str:
    """The training run's one-line description, from the train task's result."""
    did = f"trained {result.get('steps')} steps at seq_len {seq_len}"
    if result.get("final_loss") is not None:
        did += f" to loss {result['final_loss']:.4f}"
    if result.get("tokens_per_s"):
        did += f", {result['tokens_per_s']:,.0f} tokens/s"
    return did + (f", starting from the weights of {init_from}" if init_from else "")


class Bringup:
    """One flow run's work on one bring-up: runs the stages and keeps the record and MLflow."""

    def __init__(
        self, cfg: PipelineConfig, request: BringupRequest, refresh: bool, restart_count: int
    ):
        self.cfg, self.refresh = cfg, refresh
        self.comparison_table: str | None = None
        self.long_context_table: str | None = None
        self.log = get_run_logger()
        previous = read_record(cfg.run_dir)
        self.record = BringupRecord(
            status="running",
            config=cfg,
            request=request,
            commands=stage_commands(cfg),
            attempts=(previous.attempts if previous else 0) + 1,
            restart_count=restart_count,
            flow_run_ids=[*(previous.flow_run_ids if previous else []), str(flow_run.id)],
        )
        self.tracking = Tracking(cfg)
        baseline = read_record(cfg.run_root / cfg.baseline) if cfg.baseline else None
        self.baseline_summary = baseline.summary if baseline else {}
        if previous and previous.status == "running" and previous.mlflow_parent_run_id:
            # the lock was free, so the flow run that wrote "running" was killed mid-way
            closed = self.tracking.close_abandoned(
                previous.mlflow_parent_run_id, f"its flow run was killed; resumed by {flow_run.id}"
            )
            self.log.info("marked FAILED the MLflow runs a killed attempt left open: %s", closed)
        self.parent = self.tracking.start_parent(flow_run.id, browsable(flow_run.ui_url))
        self.record.mlflow_parent_run_id = self.parent
        write_record(self.record)
        self._link_mlflow()

    def _link_mlflow(self) -> None:
        url = self.tracking.run_url(self.parent)
        note = f"MLflow run {self.parent} in experiment {self.cfg.name!r}"
        if url is None:  # a local store and no served UI: say how to start one
            ui = f"mlflow ui --backend-store-uri {self.cfg.mlflow_tracking_uri}"
            self.log.info("%s; browse it with: %s", note, ui)
            return
        create_link_artifact(url, link_text="MLflow run", key="mlflow-run", description=note)

    def stage(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.log.info("stage %s", name)
        result = run()
        self.record.outputs[name] = result
        self.record.summary = comparison(self.record.outputs, self.baseline_summary)
        write_record(self.record)
        self.tracking.log_metrics(self.parent, self.record.summary)
        return result

    def child(self, stage: str, params: dict[str, Any], cached: bool, did: str) -> str:
        """A stage's nested run; `did` is its one-line description (what the stage did)."""
        run_id = self.tracking.start_child(self.parent, stage, params)
        note = f"{did} (from the Prefect cache)" if cached else did
        self.tracking.set_tags(run_id, {"prefect.cache_hit": cached, NOTE_TAG: note})
        return run_id

    # --- stages ---
    def tokenizer(self) -> dict[str, Any]:
        cfg = self.cfg.tokenizer_config()
        result, cached = call_cached(
            tokenizer_task, TokenizerOutputs(cfg.out).complete(), self.refresh, cfg=cfg
        )
        did = f"trained a {cfg.model_type} tokenizer of {cfg.vocab_size} pieces into {cfg.out}"
        run_id = self.child("tokenizer", cfg.model_dump(mode="json"), cached, did)
        self.tracking.log_dir(run_id, cfg.out, "tokenizer")
        self.tracking.finish(run_id)
        return result

    def shards(self) -> dict[str, Any]:
        cfg = self.cfg.shard_config()
        shards = ShardOutputs(cfg.out)
        result, cached = call_cached(shards_task, shards.complete(), self.refresh, cfg=cfg)
        did = (f"packed {result['train_tokens']:,} train and {result['val_tokens']:,} val tokens "
               f"into rows of {cfg.seq_len} in {cfg.out}")  # fmt: skip
        run_id = self.child("shards", cfg.model_dump(mode="json"), cached, did)
        counts = {k: v for k, v in result.items() if k.startswith(("train_", "val_"))}
        self.tracking.log_metrics(run_id, counts)
        self.tracking.client.log_artifact(run_id, str(shards.manifest_file), "shards")
        self.tracking.finish(run_id)
        return result

    def train(self, cfg: PipelineConfig | None = None, *, extended: bool = False) -> dict[str, Any]:
        """Train this bring-up's model, or control `cfg`'s; with `extended`, its context
        extension from those weights (every MLflow run is nested under this flow run's parent;
        an extension's is tagged with the run and directory it started from)."""
        cfg = cfg or self.cfg
        train_cfg = cfg.extend_train_config() if extended else cfg.train_config()
        stage = "extend/train" if extended else "train"
        mlflow = {
            "tracking_uri": str(self.cfg.mlflow_tracking_uri),
            "experiment": self.cfg.name,
            "run_name": f"{self.cfg.run_name}/{self.prefix(cfg)}{stage}",
            "parent_run_id": self.parent,
        }
        task = train_task.with_options(retries=cfg.train_retries)
        result, cached = call_cached(
            task,
            TrainOutputs(train_cfg.run_dir).complete(),
            self.refresh,
            cfg=train_cfg,
            nproc=cfg.nproc,
            mlflow=mlflow,
            fresh=self.refresh,
            grace_s=cfg.stop_grace_s,
        )
        if result.get("mlflow_run_id"):
            tags = {"checkpoint": result["checkpoint"], "prefect.cache_hit": cached}
            if extended:
                source = TrainOutputs(cfg.stage_dir("train"))
                tags["init_from"] = str(source.dir)
                if source.mlflow_run_id():
                    tags["init_from_run_id"] = source.mlflow_run_id()
            tags[NOTE_TAG] = train_note(result, train_cfg.max_seq_len, tags.get("init_from"))
            self.tracking.adopt(result["mlflow_run_id"], self.parent)
            self.tracking.set_tags(result["mlflow_run_id"], tags)
        if cfg is self.cfg and not extended:
            self.tracking.set_tags(self.parent, {"checkpoint": result["checkpoint"]})
        return result

    def prefix(self, cfg: PipelineConfig) -> str:
        """`<mixer>/` for a control's stages (MLflow run names), nothing for the model's own."""
        return "" if cfg is self.cfg else f"{cfg.mixer}/"

    def bench(self) -> dict[str, Any]:
        cfg, out = self.cfg.bench, self.cfg.stage_dir("bench")
        valid = EvalOutputs(out, ["bench_dual_primal"]).complete()
        result, cached = call_cached(bench_task, valid, self.refresh, cfg=cfg, out_dir=out)
        speedup = result["metrics"].get(SPEEDUP[1])
        did = "timed the TTT-Linear dual form against the primal" + (
            f": forward {speedup:.2f}x faster" if speedup is not None else ""
        )
        run_id = self.child("bench", cfg.model_dump(mode="json"), cached, did)
        self._log_results(run_id, result["files"])
        self.tracking.finish(run_id)
        return result

    def evaluate(
        self, cfg: PipelineConfig | None = None, *, extended: bool = False
    ) -> dict[str, Any]:
        """Export and evaluate this bring-up's model, or control `cfg`'s; with `extended`, its
        context extension, on the extension's shards (and without the attention baseline,
        which was trained at the shorter length)."""
        cfg = cfg or self.cfg
        dirs = ("extend_train", "extend_export", "extend_eval") if extended else (
            "train", "export", "eval"
        )  # fmt: skip
        train_dir, export_dir, out = map(cfg.stage_dir, dirs)
        exported = export_task(train_dir, export_dir)
        baseline = cfg.run_root / cfg.baseline / "export" if cfg.baseline and not extended else None
        if baseline is not None and not PretrainedOutputs(baseline).complete():
            raise FileNotFoundError(
                f"baseline {cfg.baseline!r}: no export at {baseline}; run that bring-up "
                "(mixer=attention) to completion first, or drop `baseline`"
            )
        configs = {name: cfg.eval_config(name, extended=extended) for name in cfg.evals}
        results: dict[str, Any] = {"export": exported}
        all_cached = True
        label = f"{self.prefix(cfg)}{'extend/' if extended else ''}"
        for name in cfg.evals:
            result, cached = call_cached(
                eval_task.with_options(task_run_name=f"evaluate-{label}{name}"),
                EvalOutputs(out, [name]).complete(),
                self.refresh,
                name=name,
                model_dir=export_dir,
                cfg=configs[name],
                baseline_dir=baseline,
                out_dir=out,
            )
            all_cached &= cached
            results[name] = result
        params = {name: c.model_dump(mode="json") for name, c in configs.items()}
        loss = results.get("perplexity", {}).get("metrics", {}).get("perplexity/model/loss")
        did = f"exported {train_dir} to {export_dir} and ran {', '.join(cfg.evals)}" + (
            f": val loss {loss:.4f}" if loss is not None else ""
        )
        run_id = self.child(f"{label}evaluate", params, all_cached, did)
        for name in cfg.evals:
            self._log_results(run_id, results[name]["files"])
        self.tracking.log_dir(run_id, export_dir, "model")
        self.tracking.finish(run_id)
        return results

    def extend(self, cfg: PipelineConfig | None = None) -> dict[str, Any]:
        """Context extension of this bring-up's model, or control `cfg`'s: shards at
        `extend_seq_len` (built once, shared with the controls), training on from the trained
        weights, export and the evals on the longer shards."""
        cfg = cfg or self.cfg
        shard_cfg = cfg.extend_shard_config()
        if cfg is self.cfg:
            valid = ShardOutputs(shard_cfg.out).complete()
            shards, _ = call_cached(shards_task, valid, self.refresh, cfg=shard_cfg)
        else:  # a control runs after the model's extend stage, on the shards it built
            shards = {"dir": str(shard_cfg.out)}
        return {
            "shards": shards,
            "train": self.train(cfg, extended=True),
            "evaluate": self.evaluate(cfg, extended=True),
        }

    def controls(self) -> dict[str, Any]:
        """Each control mixer trained and evaluated on this bring-up's data and budget."""
        results = {}
        for mixer in self.cfg.controls:
            control = self.cfg.control_config(mixer)
            self.log.info("control %s: %s", mixer, control.run_dir)
            results[mixer] = {"train": self.train(control), "evaluate": self.evaluate(control)}
            if control.extend_seq_len is not None:
                results[mixer]["extend"] = self.extend(control)
        return results

    def compare(self) -> dict[str, Any]:
        """The model against its controls (`eval_stage compare`), logged on the parent run."""
        runs = [self.cfg.run_dir, *(self.cfg.control_config(m).run_dir for m in self.cfg.controls)]
        tracking = TrackingConfig(run_id=self.parent, tracking_uri=self.tracking.uri)
        result, files = write_comparison(runs, self.cfg.stage_dir("compare"), tracking)
        self.comparison_table = summarize_comparison(result)
        create_table_artifact(comparison_records(result), key=COMPARISON_KEY,
                              description=f"{self.cfg.run_name} against its controls; the first "
                              "row is the reference")  # fmt: skip
        return {"files": [str(f) for f in files], "metrics": result.metrics}

    def long_context(self) -> dict[str, Any]:
        """This bring-up's model (the reference) and its controls, extended ones when extending,
        on the same val sequences at growing lengths (`eval_stage long-context`), logged on
        the parent run."""
        export = "extend_export" if self.cfg.extend_seq_len is not None else "export"
        configs = [self.cfg, *(self.cfg.control_config(m) for m in self.cfg.controls)]
        out = self.cfg.stage_dir("long_context")
        result, _ = call_cached(
            long_context_task,
            (out / "long_context.json").is_file(),
            self.refresh,
            model_dirs=[c.stage_dir(export) for c in configs],
            cfg=self.cfg.long_context_config(),
            out_dir=out,
        )
        measured = read_long_context(result["files"][0])
        files = [Path(f) for f in result["files"]]
        tracking = TrackingConfig(run_id=self.parent, tracking_uri=self.tracking.uri)
        log_metrics_and_files(long_context_metrics(measured), files, tracking, step=0,
                              artifact_path="long_context")  # fmt: skip
        self.long_context_table = summarize_long_context(measured)
        return result

    def register(self) -> dict[str, Any]:
        """The final export (the extended one when extending) as a pyfunc model in the Model
        Registry (`flows.registry`), in a `register` child run; `champion` moves only on an
        interval-supported improvement."""
        export = self.cfg.stage_dir("extend_export" if self.cfg.extend_seq_len else "export")
        name = model_name(str(self.cfg.preset), self.cfg.mixer)

        def start_run() -> str:
            return self.child("register", {"model": name, "export": str(export)}, False,
                              f"registered {export} as a version of {name}")  # fmt: skip

        tags = {EXPORT_TAG: export_sha256(export),
                "data.shards_sha256": manifest_sha256(self.cfg.shard_config().out),
                "git.commit": git_commit() or "unknown", "run_dir": str(self.cfg.run_dir),
                "prefect.flow_run_id": str(flow_run.id)}  # fmt: skip
        result = register_export(self.tracking.uri, start_run, export, name,
                                 Measured.of_summary(self.record.summary), tags)  # fmt: skip
        self.log.info("%s version %s: %s", name, result["version"], result["decision"])
        return result

    def _log_results(self, run_id: str, files: list[str]) -> None:
        """The eval_stage MLflow logging (metrics at the model's step, JSON + plots)."""
        paths = [Path(f) for f in files]
        result = read_result(next(p for p in paths if p.suffix == ".json"))
        log_result(result, paths, TrackingConfig(run_id=run_id, tracking_uri=self.tracking.uri))

    def finish(self, status: str, error: str | None = None) -> None:
        self.record.status = "completed" if status == "FINISHED" else "failed"
        self.record.error = error
        write_record(self.record)
        summary = summary_markdown(
            self.cfg,
            self.record.summary,
            status=self.record.status,
            error=error,
            flow_run_url=browsable(flow_run.ui_url),
        )
        self.tracking.set_tags(self.parent, {NOTE_TAG: summary})  # the run page's description
        description = f"{self.cfg.run_name}: {self.record.status}"
        create_markdown_artifact(summary, key=SUMMARY_KEY, description=description)
        rows = headline_rows(self.cfg, self.record.summary)
        if rows:
            create_table_artifact(rows, key=HEADLINE_KEY, description=description)
        self.tracking.finish(self.parent, status)
        lines = summary_lines(self.cfg, self.record.summary)
        if self.comparison_table:
            lines += ["", "comparison (eval_stage compare; the first row is the reference):"]
            lines += self.comparison_table.splitlines()
        if self.long_context_table:
            lines += ["", "long context (eval_stage long-context; vs the first model, paired):"]
            lines += self.long_context_table.splitlines()
        print("\n".join(lines))  # log_prints: the UI too


# Prefect artifact keys: one each, the same for every bring-up, so the Artifacts page keeps
# each one's history across runs
SUMMARY_KEY, HEADLINE_KEY, COMPARISON_KEY = (
    "bringup-summary",
    "bringup-headline",
    "bringup-comparison",
)

STAGES = (
    "tokenizer", "shards", "train", "bench", "evaluate", "extend", "controls", "compare",
    "long_context", "register",
)  # fmt: skip


def stages_for(cfg: PipelineConfig) -> tuple[str, ...]:
    """The stages of a bring-up: `bench` times the TTT dual form against the primal, an op
    benchmark that says nothing about another mixer, so only TTT bring-ups run it; `controls`
    and `compare` run when controls are configured, `extend` with `extend_seq_len`,
    `long_context` with `long_context`."""
    skip = set() if cfg.mixer == "ttt_linear" else {"bench"}
    if not cfg.controls:
        skip |= {"controls", "compare"}
    if cfg.extend_seq_len is None:
        skip.add("extend")
    if cfg.long_context is None:
        skip.add("long_context")
    return tuple(s for s in STAGES if s not in skip)


def flow_run_label() -> str:
    """`<preset>-<mixer>[ +overrides]`, or the `run_name` an override sets: flow runs named by
    what they bring up, not at random."""
    params = flow_run.parameters
    named = (params.get("overrides") or {}).get("run_name")
    if named:
        return str(named)
    mixer = (
        params.get("mixer")
        or (params.get("overrides") or {}).get("mixer")
        or PipelineConfig.model_fields["mixer"].default
    )
    extra = " +overrides" if params.get("overrides") else ""
    return f"{params.get('preset', DEFAULT_PRESET)}-{mixer}{extra}"


@flow(name="bringup", log_prints=True, flow_run_name=flow_run_label)
def bringup(
    preset: PresetName = DEFAULT_PRESET,
    mixer: Family | None = None,
    overrides: dict[str, Any] = {},  # noqa: B006 (never mutated; `{}` renders as the form's default)
    refresh: bool = False,
    restart_count: int = 0,
) -> dict[str, Any] | State:
    """Bring up one model end to end under the serving process's run root and MLflow store.

    Args:
        preset: the pipeline preset (`debug_tiny`: seconds per stage; `small_cpu`: minutes).
        mixer: the sequence mixer; None keeps the preset's (`ttt_linear`).
        overrides: dotted PipelineConfig keys, as `flows run --set`: {"train.steps": 50}.
        refresh: rerun every stage, ignoring the cache.
        restart_count: set by the restart automation and `resume` (not in the deployment's
            form); over the config's `max_restarts` the run is cancelled.
    """
    request = BringupRequest(preset=preset, mixer=mixer, overrides=overrides)
    try:
        config = resolve(request, *served_location())
    except InvalidRequest as e:
        if restart_count > 0:  # the same request fails the same way: never loop on it
            return Cancelled(message=f"not restarted, the request is invalid: {e}")
        raise
    if restart_count > config.max_restarts:
        return Cancelled(
            message=f"restart {restart_count} exceeds max_restarts={config.max_restarts} for "
            f"{config.run_dir}; fix the cause (see bringup.json) and start it again by hand"
        )
    acquire_lock(config.run_dir)
    try:
        work = Bringup(config, request, refresh, restart_count)
        try:
            for name in stages_for(config):
                work.stage(name, getattr(work, name))
        except BaseException as e:
            work.finish("FAILED", f"{type(e).__name__}: {e}"[:4000])
            raise
        work.finish("FINISHED")
        return work.record.outputs
    finally:
        release_lock(config.run_dir)
