"""The few numbers that say which bring-up is better, read from the stages' outputs.

Logged on the MLflow parent run (so two bring-ups compare on one screen), written to
`bringup.json` as `summary` and printed at the end of every bring-up. Names sort before the
per-layer diagnostics (`ttt/layer*`); the attention baseline's, when one is configured, carry
the prefix `baseline/`.

`val/loss` is THE validation loss: the perplexity eval's token-exact loss over the whole val
split (the presets' setting; a run limited by `perplexity.max_batches` says so in its
label), with its 95% bootstrap interval (`val/loss_ci95_lo`, `_hi`). The trainer's own number is a
quick estimate on `eval_batches` batches and is named for what it is,
`train/val_loss_estimate`.
"""

from __future__ import annotations

import re
from typing import Any

from flows.config import PipelineConfig

# headline name -> (eval output, metric key after `<eval>/<role>/`; `{longest}` = its largest
# context or length)
EVAL_HEADLINES = {
    "val/loss": ("perplexity", "loss"),
    "val/loss_ci95_lo": ("perplexity", "loss_lo"),
    "val/loss_ci95_hi": ("perplexity", "loss_hi"),
    "val/perplexity": ("perplexity", "perplexity"),
    "val/loss_last_bucket": ("position_loss", "len_{longest}/last_bucket_loss"),
    "niah/accuracy": ("niah", "accuracy"),
    "latency/decode_ms_longest": ("latency", "ctx_{longest}/decode_ms"),
    "latency/prefill_tokens_per_s_longest": ("latency", "ctx_{longest}/prefill_tokens_per_s"),
}
SPEEDUP = (
    "bench/dual_over_primal_speedup",
    "bench_dual_primal/forward/speedup_dual_over_primal_anchored",
)


def _longest(metrics: dict[str, float], prefix: str, pattern: str) -> str | None:
    """`pattern` with `{longest}` set to the largest number any key under `prefix` has there."""
    head, _, tail = pattern.partition("{longest}")
    found = [
        int(m.group(1))
        for key in metrics
        if (m := re.fullmatch(re.escape(prefix + head) + r"(\d+)" + re.escape(tail), key))
    ]
    return prefix + head + str(max(found)) + tail if found else None


def headline(outputs: dict[str, dict[str, Any]], role: str = "model") -> dict[str, float]:
    """Headline metrics of `role` ("model" or "baseline") from `bringup.json`'s `outputs`; only
    those the finished stages measured. Train and bench numbers exist for the model only."""
    found: dict[str, float] = {}
    evaluated = outputs.get("evaluate", {})
    for name, (eval_name, pattern) in EVAL_HEADLINES.items():
        metrics = evaluated.get(eval_name, {}).get("metrics", {})
        prefix = f"{eval_name}/{role}/"
        key = _longest(metrics, prefix, pattern) if "{longest}" in pattern else prefix + pattern
        if key is not None and key in metrics:
            found[name] = float(metrics[key])
    position = evaluated.get("position_loss", {}).get("metrics", {})
    for key, value in position.items():  # the mean loss at each length (1x, 2x, 4x...)
        match = re.fullmatch(rf"position_loss/{role}/len_(\d+)/mean_loss", key)
        if match:
            found[f"val/loss_len_{match.group(1)}"] = float(value)
    train = outputs.get("train", {})
    if role == "model":
        for name, key in TRAIN_KEYS:
            if train.get(key) is not None:
                found[name] = float(train[key])
        bench = outputs.get("bench", {}).get("metrics", {})
        if SPEEDUP[1] in bench:
            found[SPEEDUP[0]] = float(bench[SPEEDUP[1]])
    return found


TRAIN_VAL_ESTIMATE = "train/val_loss_estimate"  # the trainer's, on `eval_batches` batches
# headline name -> the train stage's output
TRAIN_KEYS = (
    ("train/loss", "final_loss"),
    (TRAIN_VAL_ESTIMATE, "val_loss"),
    ("train/tokens_per_s", "tokens_per_s"),
)
TRAIN_HEADLINES = tuple(name for name, _ in TRAIN_KEYS)


def comparison(
    outputs: dict[str, dict[str, Any]], baseline_summary: dict[str, float] | None = None
) -> dict[str, float]:
    """The model's headline metrics plus the baseline's as `baseline/<name>`: its evals as
    measured beside the model, its train numbers from its own bring-up's `summary`."""
    trained = {k: v for k, v in (baseline_summary or {}).items() if k in TRAIN_HEADLINES}
    measured = headline(outputs, "baseline")
    if not measured:  # no baseline configured, or no eval has run yet
        return headline(outputs)
    baseline = {f"baseline/{k}": v for k, v in {**trained, **measured}.items()}
    return {**headline(outputs), **baseline}


def identity(cfg: PipelineConfig) -> dict[str, Any]:
    """The few params that tell bring-ups apart in a compare view (no paths)."""
    train = cfg.train_config()
    corpus = cfg.corpus
    data = corpus.format if not corpus.paths else f"{corpus.format}:{len(corpus.paths)} paths"
    if corpus.max_bytes:
        data += f" ({corpus.max_bytes:,} bytes)"
    return {
        "preset": cfg.preset,
        "mixer": cfg.mixer,
        "model_params": train.model.num_params(),
        "d_model": train.model.d_model,
        "n_layers": train.model.n_layers,
        "vocab_size": cfg.vocab_size,
        "data": data,
        "steps": train.steps,
        "seq_len": train.seq_len,
        "tokens_seen": train.steps
        * train.batch_size
        * train.grad_accum
        * train.seq_len
        * cfg.nproc,
    }


INTERVAL = ("val/loss_ci95_lo", "val/loss_ci95_hi")
LABELS = {  # what a number is, where its name alone could be read as something else
    TRAIN_VAL_ESTIMATE: "trainer's estimate, few batches",
}


def val_loss_label(cfg: PipelineConfig) -> str:
    """What the val loss was measured on: the whole val split, or the rows the perplexity eval
    was limited to (`perplexity.max_batches`)."""
    ppl = cfg.eval_config("perplexity")
    if ppl.max_batches is None:
        return "whole val split, [95% CI]"
    return f"first {ppl.max_batches * ppl.batch_size} val rows, [95% CI]"


def _cell(metrics: dict[str, float], name: str, prefix: str = "") -> str:
    """`value`, or for the val loss `value [lo, hi]` when its interval was measured."""
    value = metrics[prefix + name]
    lo, hi = (metrics.get(prefix + bound) for bound in INTERVAL)
    if name == "val/loss" and lo is not None and hi is not None:
        return f"{value:.4f} [{lo:.4f}, {hi:.4f}]"
    return f"{value:.4g}"


def summary_lines(cfg: PipelineConfig, metrics: dict[str, float]) -> list[str]:
    """One screen: each headline metric (the val loss with its interval, the trainer's estimate
    labelled as one), with the baseline's beside it when there is one."""
    lines = [f"bring-up {cfg.run_name} ({cfg.preset}, {cfg.mixer}): {cfg.run_dir}"]
    has_baseline = any(k.startswith("baseline/") for k in metrics)
    if has_baseline:
        lines.append(f"  {'metric':<48}{cfg.mixer:>26} {'baseline ' + str(cfg.baseline):>32}")
    for name in metrics:
        if name.startswith("baseline/") or name in INTERVAL:
            continue
        row = f"  {_label(cfg, name):<48}{_cell(metrics, name):>26}"
        if f"baseline/{name}" in metrics:
            row += f" {_cell(metrics, name, 'baseline/'):>32}"
        lines.append(row)
    return lines


def _label(cfg: PipelineConfig, name: str) -> str:
    """A headline metric's name with what it was measured on, where the name alone could be
    read as something else: `val/loss_len_512 (... 2x the training length)`."""
    labels = {**LABELS, "val/loss": val_loss_label(cfg)}
    if name in labels:
        return f"{name} ({labels[name]})"
    match = re.fullmatch(r"val/loss_len_(\d+)", name)
    if match:
        times = int(match.group(1)) / cfg.train_config().max_seq_len
        return f"{name} (sequences of {times:g}x the training length)"
    return name


def headline_rows(cfg: PipelineConfig, metrics: dict[str, float]) -> list[dict[str, str]]:
    """The headline table, one dict per metric: `metric` (labelled with what it was measured
    on), the model's cell (column named by the mixer) and the baseline's when there is one (the
    val loss as `value [lo, hi]`). The Markdown summary and Prefect's table artifact show it."""
    baseline = any(k.startswith("baseline/") for k in metrics)
    rows = []
    for name in metrics:
        if name.startswith("baseline/") or name in INTERVAL:
            continue
        row = {"metric": _label(cfg, name), cfg.mixer: _cell(metrics, name)}
        if baseline:
            row[f"baseline {cfg.baseline}"] = (
                _cell(metrics, name, "baseline/") if f"baseline/{name}" in metrics else ""
            )
        rows.append(row)
    return rows


def summary_markdown(
    cfg: PipelineConfig,
    metrics: dict[str, float],
    *,
    status: str,
    error: str | None,
    flow_run_url: str | None,
) -> str:
    """The bring-up's summary as Markdown, for the MLflow parent run's description and the
    Prefect flow run's artifact: the headline table (with the baseline's column when there is
    one), then the comparison with the controls and the long-context table when those stages
    wrote them, the files a person opens next, and the flow run's link."""
    lines = [f"### Bring-up `{cfg.run_name}`: {status}", "",
             f"{cfg.preset} preset, mixer `{cfg.mixer}`, run dir `{cfg.run_dir}`", ""]  # fmt: skip
    if error:
        lines += [f"**Error:** `{error}`", ""]
    rows = headline_rows(cfg, metrics)
    header = list(rows[0]) if rows else ["metric", cfg.mixer]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
    files = {"export": cfg.stage_dir("export")}
    for title, stage, stem in (("Against the controls", "compare", "compare"),
                               ("Long context", "long_context", "long_context")):  # fmt: skip
        table = cfg.stage_dir(stage) / f"{stem}.md"
        if table.is_file():
            lines += ["", f"#### {title}", "", table.read_text().rstrip()]
            files[f"{stage} figure"] = table.with_suffix(".png")
    lines += ["", "#### Files", ""]
    lines += [f"- {what}: `{path}`" for what, path in files.items() if path.exists()]
    if flow_run_url:
        lines.append(f"- Prefect flow run: {flow_run_url}")
    return "\n".join(lines) + "\n"
