"""`compare`: several bring-ups side by side, one table and one figure, from the results they wrote.

A RUN is a directory holding eval result JSONs (`perplexity.json`, `position_loss.json`,
`latency.json`), directly or under `eval/`, so a bring-up directory (`runs/small_cpu-ttt_linear`)
can be passed as it is. The first RUN is the reference: every other row says how far its val
loss is from it. Nothing is re-measured here; runs evaluated on different val data (another
tokenizer or other val shards, read from the shard manifests) are refused, since their losses
are not comparable.

Per run: val loss (with the perplexity eval's 95% interval when it has one), mean loss over
sequences of 1x/2x/4x... the training length (the position-loss eval), decode latency and
prefill throughput at the longest context (the latency eval), and training tokens/s (recorded
by the trainer, carried by the export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from data_stage import read_manifest
from ttt_core import sha256_bytes

from .errors import EvalInputError
from .results import (
    EvalResult,
    metric_key,
    read_result,
    result_file,
    text_table,
    unique_labels,
)

EVAL = "compare"
RESULTS_SUBDIR = "eval"
SOURCES = ("perplexity", "position-loss", "latency")


class RunRow(BaseModel):
    """One compared run. `loss_at` maps a length multiplier ("1", "2", ...) to the mean loss over
    sequences of that many training lengths; None where the run has no such result."""

    name: str
    run: str
    mixer: str
    num_params: int
    tokens_seen: int | None
    train_len: int | None
    val_loss: float | None
    val_loss_lo: float | None = None
    val_loss_hi: float | None = None
    val_loss_vs_reference_pct: float | None = None
    loss_at: dict[str, float] = {}
    decode_context: int | None = None
    decode_ms: float | None = None
    prefill_tokens_per_s: float | None = None
    train_tokens_per_s: float | None = None


def results_dir(run: Path) -> Path:
    """Where `run`'s result JSONs are: `run/eval` when it exists, else `run` itself."""
    nested = run / RESULTS_SUBDIR
    return nested if nested.is_dir() else run


def load_results(run: Path) -> dict[str, EvalResult]:
    """The perplexity, position-loss and latency results of `run`, by eval name; a run with none
    of them is refused (EvalInputError naming the folder looked in)."""
    folder = results_dir(Path(run))
    if not folder.is_dir():
        raise EvalInputError(f"{run}: no such run directory")
    found: dict[str, EvalResult] = {}
    for name in SOURCES:
        path = result_file(folder, name)
        if path.is_file():
            found[name] = read_result(path)
    if not found:
        raise EvalInputError(
            f"{folder}: no perplexity.json, position_loss.json or latency.json; evaluate the run "
            "first (python -m eval_stage perplexity|position-loss|latency)"
        )
    return found


def val_data_fingerprint(results: dict[str, EvalResult]) -> str | None:
    """sha256 over the tokenizer hash and the val shards' hashes of the data the run's data evals
    read; None when no data eval ran or its shard manifest is gone."""
    for name in ("perplexity", "position-loss"):
        if name in results:
            try:
                manifest = read_manifest(Path(results[name].config["data"]))
            except (OSError, ValueError):
                return None
            text = "\n".join([manifest.tokenizer.hash, *(s.sha256 for s in manifest.val.shards)])
            return sha256_bytes(text.encode())
    return None


def _model_metric(result: EvalResult | None, *parts: object) -> float | None:
    if result is None:
        return None
    return result.metrics.get(metric_key(result.eval, "model", *parts))


def summarize_run(run: Path, results: dict[str, EvalResult]) -> RunRow:
    """The row of one run, from its results' role-`model` metrics."""
    first = next(iter(results.values()))
    info = first.role_info("model")
    if info is None:
        raise EvalInputError(f"{run}: its results describe no model")
    perplexity = results.get("perplexity")
    position = results.get("position-loss")
    latency = results.get("latency")
    train_len = position.config.get("train_len") if position else None
    loss_at: dict[str, float] = {}
    if position is not None and train_len:
        for multiplier in position.config["multipliers"]:
            value = _model_metric(position, f"len_{multiplier * train_len}", "mean_loss")
            if value is not None:
                loss_at[str(multiplier)] = value
    decode_context = None
    if latency is not None:
        decode_context = max(row["context"] for row in latency.tables["latency"])
    return RunRow(
        name=info.mixer,
        run=str(run),
        mixer=info.mixer,
        num_params=info.num_params,
        tokens_seen=info.tokens_seen,
        train_len=train_len,
        val_loss=_model_metric(perplexity, "loss"),
        val_loss_lo=_model_metric(perplexity, "loss_lo"),
        val_loss_hi=_model_metric(perplexity, "loss_hi"),
        loss_at=loss_at,
        decode_context=decode_context,
        decode_ms=_model_metric(latency, f"ctx_{decode_context}", "decode_ms"),
        prefill_tokens_per_s=_model_metric(
            latency, f"ctx_{decode_context}", "prefill_tokens_per_s"
        ),
        train_tokens_per_s=info.train_tokens_per_s,
    )


def _unique_names(rows: list[RunRow]) -> list[RunRow]:
    """Rows named by mixer, told apart as `unique_labels` does."""
    names = unique_labels([row.mixer for row in rows], [row.run for row in rows])
    return [row.model_copy(update={"name": name}) for row, name in zip(rows, names, strict=True)]


def compare_runs(runs: list[Path]) -> EvalResult:
    """One `compare` result over `runs` (the first is the reference); refused before any work when
    fewer than two runs are given, a run has no results, or the runs' val data differ."""
    if len(runs) < 2:
        raise EvalInputError(f"compare needs at least two runs, got {len(runs)}")
    resolved = [Path(run).resolve() for run in runs]
    if len(set(resolved)) < len(resolved):
        raise EvalInputError(f"a run is given twice: {[str(r) for r in runs]}")
    loaded = [(Path(run), load_results(Path(run))) for run in runs]
    fingerprints = {str(run): val_data_fingerprint(results) for run, results in loaded}
    known = {f for f in fingerprints.values() if f is not None}
    if len(known) > 1:
        raise EvalInputError(
            "the runs were evaluated on different val data (tokenizer or val shards differ), so "
            f"their losses are not comparable: {fingerprints}"
        )
    rows = _unique_names([summarize_run(run, results) for run, results in loaded])
    reference = rows[0]
    for i, row in enumerate(rows[1:], start=1):
        if row.val_loss is not None and reference.val_loss:
            pct = 100.0 * (row.val_loss - reference.val_loss) / reference.val_loss
            rows[i] = row.model_copy(update={"val_loss_vs_reference_pct": pct})
    metrics: dict[str, float] = {}
    for row in rows:
        for key, value in _row_metrics(row).items():
            metrics[metric_key(EVAL, row.name, key)] = value
    return EvalResult(
        eval=EVAL,
        device=next(iter(loaded[0][1].values())).device,  # the reference run's
        config={"runs": [str(run) for run, _ in loaded], "reference": reference.name},
        metrics=metrics,
        tables={
            "runs": [row.model_dump(mode="json") for row in rows],
            "position_loss": _model_rows(rows, loaded, "position-loss", "buckets"),
            "latency": _model_rows(rows, loaded, "latency", "latency"),
        },
        notes=[
            f"reference: {reference.name} ({reference.run}); val data "
            + ("identical across runs" if known else "not verifiable (shard manifests gone)"),
            "loss_at[m]: mean next-token loss over sequences of m x train_len tokens",
        ],
    )


def _model_rows(
    rows: list[RunRow], loaded: list[tuple[Path, dict[str, EvalResult]]], eval_name: str, table: str
) -> list[dict[str, Any]]:
    """Each run's role-`model` rows of `eval_name`'s `table`, tagged with the run's name, so the
    figure can be redrawn from this result alone."""
    tagged = []
    for row, (_, results) in zip(rows, loaded, strict=True):
        if eval_name in results:
            mine = [r for r in results[eval_name].tables[table] if r.get("role") == "model"]
            tagged += [{"name": row.name, **r} for r in mine]
    return tagged


def _row_metrics(row: RunRow) -> dict[str, float]:
    flat: dict[str, Any] = {
        "val_loss": row.val_loss,
        "val_loss_vs_reference_pct": row.val_loss_vs_reference_pct,
        "decode_ms": row.decode_ms,
        "prefill_tokens_per_s": row.prefill_tokens_per_s,
        "train_tokens_per_s": row.train_tokens_per_s,
        **{f"loss_at_{m}x": v for m, v in row.loss_at.items()},
    }
    return {k: float(v) for k, v in flat.items() if v is not None}


def table_columns(rows: list[RunRow]) -> list[str]:
    multipliers = list(dict.fromkeys(m for row in rows for m in row.loss_at))
    return [
        "model",
        "params",
        "tokens",
        "val loss",
        "95% CI",
        "vs ref",
        *(f"loss @{m}x" for m in multipliers),
        "decode ms",
        "prefill tok/s",
        "train tok/s",
    ]


def table_rows(rows: list[RunRow]) -> list[dict[str, Any]]:
    """The rows as the printed/markdown table shows them."""
    out = []
    for row in rows:
        ci = (
            f"[{row.val_loss_lo:.4f}, {row.val_loss_hi:.4f}]"
            if row.val_loss_lo is not None and row.val_loss_hi is not None
            else ""
        )
        pct = row.val_loss_vs_reference_pct
        out.append(
            {
                "model": row.name,
                "params": f"{row.num_params / 1e6:.2f}M",
                "tokens": f"{row.tokens_seen:,}" if row.tokens_seen is not None else "",
                "val loss": row.val_loss if row.val_loss is not None else "",
                "95% CI": ci,
                "vs ref": "reference" if pct is None and row is rows[0] else _pct(pct),
                **{f"loss @{m}x": v for m, v in row.loss_at.items()},
                "decode ms": row.decode_ms if row.decode_ms is not None else "",
                "prefill tok/s": _count(row.prefill_tokens_per_s),
                "train tok/s": _count(row.train_tokens_per_s),
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}%"


def _count(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def rows_of(result: EvalResult) -> list[RunRow]:
    return [RunRow.model_validate(r) for r in result.tables["runs"]]


def records(result: EvalResult) -> list[dict[str, str]]:
    """The comparison's table as one dict per model, keys in column order, cells as shown
    (losses to 4 decimals, missing cells empty): the Markdown table's rows, and what a table
    artifact shows."""
    rows = rows_of(result)
    columns = table_columns(rows)
    return [
        {c: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
         for c, v in zip(columns, map(row.get, columns), strict=True)}
        for row in table_rows(rows)
    ]  # fmt: skip


def summarize(result: EvalResult) -> str:
    """The comparison as a plain-text table."""
    rows = rows_of(result)
    return text_table(table_rows(rows), table_columns(rows))


def markdown(result: EvalResult) -> str:
    """The comparison as a Markdown table, with what each column means."""
    rows = rows_of(result)
    columns = table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(record.values()) + " |" for record in records(result)]
    decode = rows[0].decode_context
    lines += [
        "",
        f"- vs ref: val loss relative to {rows[0].name} (the first run).",
        "- loss @mx: mean next-token loss over sequences of m x the training length, cut from the "
        "start of the val stream (longer sequences cover more text): compare models within a "
        "column, not columns with each other.",
        f"- decode ms: ms per generated token at a {decode}-token context (batch 1); prefill "
        "tok/s at the same context; train tok/s: training throughput the trainer logged.",
    ]
    return "\n".join(lines) + "\n"
