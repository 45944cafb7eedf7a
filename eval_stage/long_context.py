"""`long-context`: several models on the same val sequences at several lengths, each paired
against the first (the reference).

For each length L, `sequences` windows of L + 1 consecutive val-stream tokens are cut from the
start of the split (`data.long_sequences`): the same windows for every model. Per model and L:

- `loss`: the mean next-token loss over the second half of each sequence (token indices
  L/2 + 1 .. L, each predicted after reading more than L/2 tokens), what the longer context buys;
  every sequence weighs the same. `loss_ci95` is its bootstrap interval over sequences.
- `loss_diff_vs_reference`: that loss minus the reference's; `diff_ci95` is a *paired*
  percentile bootstrap over sequences of the per-sequence differences (one draw of sequences
  for both models, so what makes a sequence hard for both cancels).
- `niah_accuracy`: passkey retrieval (the `niah` eval's prompts and rank scoring) at a context
  of L tokens over `niah_depths` x `niah_trials` prompts, with its Wilson 95% interval.
- `state_bytes`: the decode cache's bytes after a batch-1 prefill of L tokens (attention: the
  keys and values of those L tokens; TTT: its fixed state); `decode_ms_per_token`: the mean wall
  ms of `decode_tokens` single-token steps from there (the mean counts a chunked model's
  periodic inner step; the median is beside it); `peak_rss_mb`: the peak memory of that prefill
  and decode above what the process held before (`memory.peak_memory`).

Models are measured length by length, one model after another at each length, so timings that
are compared were taken close together.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data_stage import ShardDataset, Tokenizer, load_tokenizer
from stage_common.faults import output_dir_problem

from .bootstrap import CONFIDENCE, mean_interval, wilson_interval
from .config import LatencyConfig, LongContextConfig
from .data import available_sequences, check_fits, long_sequences, open_val
from .device import describe_device, model_device
from .errors import EvalInputError
from .latency import measure_context
from .memory import peak_memory
from .models import LoadedModel
from .niah import NiahCase, build_cases, likelihood_scorer, score_ranked
from .position_loss import losses_by_position
from .results import DeviceInfo, created_by, text_table, unique_labels, utc_now

EVAL = "long-context"
STEM = "long_context"
SCHEMA_VERSION = 1
Interval = tuple[float, float]


class LongContextModel(BaseModel):
    """One compared model: its name in the rows, where it came from, what it was trained at."""

    name: str
    source: str
    mixer: str
    num_params: int
    step: int | None = None
    tokens_seen: int | None = None
    train_seq_len: int | None = Field(None, description="the length it was trained at")
    rope_theta: float


class LongContextRow(BaseModel):
    """One model at one length (module docstring for each field)."""

    model: str
    mixer: str
    length: int
    sequences: int
    loss: float
    loss_ci95: Interval
    loss_diff_vs_reference: float
    diff_ci95: Interval
    niah_accuracy: float | None
    niah_ci95: Interval | None
    niah_cases: int
    state_bytes: int
    decode_ms_per_token: float
    decode_ms_median: float
    peak_rss_mb: float


class LongContextResult(BaseModel):
    """`long_context.json`: one row per model x length; `reference` names the first model."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    schema_version: int = SCHEMA_VERSION
    eval: str = EVAL
    created_by: str = Field(default_factory=created_by)
    created_at: str = Field(default_factory=utc_now)
    device: DeviceInfo
    reference: str
    lengths: list[int]
    niah_chance: float | None
    models: list[LongContextModel]
    config: dict
    rows: list[LongContextRow]
    notes: list[str] = Field(default_factory=list)
    plots: list[str] = Field(default_factory=list)

    def row(self, model: str, length: int) -> LongContextRow:
        return next(r for r in self.rows if r.model == model and r.length == length)


class _Measured(BaseModel):
    """What one model gave at one length before it is paired with the reference."""

    per_sequence: list[float]  # second-half mean loss of each sequence
    credits: list[float]  # passkey credit of each prompt
    state_bytes: int
    decode_ms_mean: float
    decode_ms_median: float
    peak_bytes: int


def _sequence_counts(ds: ShardDataset, config: LongContextConfig) -> dict[int, int]:
    """Sequences per length; refused (before any work) where the val split holds fewer than two
    sequences of that length, the least a paired interval needs."""
    counts = {L: min(config.sequences, available_sequences(ds, L)) for L in config.lengths}
    short = [L for L, n in counts.items() if n < 2]
    if short:
        raise EvalInputError(
            f"{ds.directory}: the val split holds fewer than 2 sequences of {short[0] + 1} "
            "tokens; use shorter --lengths or more val data"
        )
    return counts


def _niah_cases(
    ds: ShardDataset, config: LongContextConfig
) -> tuple[dict[int, list[NiahCase]], Tokenizer | None]:
    """Passkey prompts by length and the tokenizer that scores them (({}, None) with
    niah_trials 0); refused when a length cannot hold the needle and question."""
    if config.niah_trials == 0:
        return {}, None
    tokenizer = load_tokenizer(ds.directory / ds.manifest.tokenizer.dir)
    try:
        cases = build_cases(ds, tokenizer, config.niah())
    except EvalInputError as e:
        raise EvalInputError(
            f"passkey prompts ({e}): here --lengths; --niah-trials 0 skips them"
        ) from None
    return {L: [c for c in cases if c.context == L] for L in config.lengths}, tokenizer


def _measure(
    loaded: LoadedModel,
    sequences: np.ndarray,
    cases: list[NiahCase],
    tokenizer: Tokenizer | None,
    config: LongContextConfig,
) -> _Measured:
    model, length = loaded.model, sequences.shape[1] - 1
    losses = losses_by_position(model, sequences, config.batch_size)  # (n, L)
    credits = []
    if cases:
        scorer = likelihood_scorer(model, tokenizer, config.batch_size)
        rows, _ = score_ranked(cases, scorer(cases))
        credits = [r.credit for r in rows]
    latency = LatencyConfig(
        contexts=[length], decode_tokens=config.decode_tokens, repeats=1, seed=config.seed
    )
    measured = {}

    def prefill_and_decode() -> None:
        measured["row"] = measure_context(model, length, latency, "model", warm_up_prefill=False)

    peak = peak_memory(prefill_and_decode, model_device(model))
    row = measured["row"]
    return _Measured(
        per_sequence=losses[:, length // 2 :].mean(axis=1).tolist(),
        credits=credits,
        state_bytes=row.state_bytes,
        decode_ms_mean=row.decode_ms_mean,
        decode_ms_median=row.decode_ms,
        peak_bytes=peak.bytes,
    )


def _interval(values: np.ndarray, config: LongContextConfig) -> Interval:
    lo, hi = mean_interval(values, config.bootstrap_samples, config.bootstrap_seed)
    return float(lo), float(hi)


def _row(name: str, loaded: LoadedModel, length: int, mine: _Measured, ref: _Measured,
         config: LongContextConfig) -> LongContextRow:  # fmt: skip
    losses, ref_losses = np.array(mine.per_sequence), np.array(ref.per_sequence)
    diff = losses - ref_losses  # paired: the same sequences, in the same order
    niah = None
    if mine.credits:
        niah = (float(np.mean(mine.credits)), wilson_interval(sum(mine.credits), len(mine.credits)))
    return LongContextRow(
        model=name,
        mixer=loaded.config.mixer_name,
        length=length,
        sequences=len(losses),
        loss=float(losses.mean()),
        loss_ci95=_interval(losses, config),
        loss_diff_vs_reference=float(diff.mean()),
        diff_ci95=_interval(diff, config),  # the same resampled indices for every model
        niah_accuracy=None if niah is None else niah[0],
        niah_ci95=None if niah is None else niah[1],
        niah_cases=len(mine.credits),
        state_bytes=mine.state_bytes,
        decode_ms_per_token=mine.decode_ms_mean,
        decode_ms_median=mine.decode_ms_median,
        peak_rss_mb=mine.peak_bytes / 1e6,
    )


def _describe(name: str, loaded: LoadedModel) -> LongContextModel:
    info, config = loaded.info, loaded.config
    return LongContextModel(
        name=name,
        source=str(info.get("source", "<in memory>")),
        mixer=config.mixer_name,
        num_params=config.num_params(),
        step=info.get("step"),
        tokens_seen=info.get("tokens_seen"),
        train_seq_len=info.get("seq_len"),
        rope_theta=config.rope_theta,
    )


def evaluate_long_context(
    models: list[LoadedModel], config: LongContextConfig
) -> LongContextResult:
    """Every model at every length on the same val sequences (module docstring); the first
    model is the reference. Inputs are checked (data, vocabularies, lengths) before any work."""
    if not models:
        raise EvalInputError("long-context needs at least one --model")
    ds = open_val(config.data, verify=config.verify_data)
    for loaded in models:
        check_fits(ds, loaded)
    counts = _sequence_counts(ds, config)
    cases, tokenizer = _niah_cases(ds, config)
    names = unique_labels(
        [m.config.mixer_name for m in models], [str(m.info.get("source", "")) for m in models]
    )
    rows: list[LongContextRow] = []
    for length in config.lengths:
        sequences = long_sequences(ds, length, counts[length])
        measured = [
            _measure(m, sequences, cases.get(length, []), tokenizer, config) for m in models
        ]
        rows += [
            _row(name, loaded, length, mine, measured[0], config)
            for name, loaded, mine in zip(names, models, measured, strict=True)
        ]
    device = describe_device(model_device(models[0].model))
    return LongContextResult(
        device=device,
        reference=names[0],
        lengths=config.lengths,
        niah_chance=1.0 / config.niah_candidates if config.niah_trials else None,
        models=[_describe(n, m) for n, m in zip(names, models, strict=True)],
        config=config.model_dump(mode="json"),
        rows=rows,
        notes=[
            f"loss: mean next-token loss of tokens L/2+1..L of each of the same val sequences "
            f"(cut back to back from the start of the val stream); {CONFIDENCE:.0%} intervals "
            f"by the percentile bootstrap over sequences ({config.bootstrap_samples} resamples, "
            f"seed {config.bootstrap_seed}), paired against {names[0]} for the differences",
            "niah: rank scoring of the passkey among "
            f"{config.niah_candidates} keys (chance {1 / config.niah_candidates:.3g}), Wilson "
            "95% interval over prompts",
            f"state, decode and memory: batch 1 after a prefill of L val-independent random ids "
            f"on {device.type} ({device.name}), {device.threads} threads; decode ms is the mean "
            f"of {config.decode_tokens} steps; peak memory above the process's before the call",
        ],
    )


_METRIC_UNSAFE = re.compile(r"[^\w./ -]")


def metrics(result: LongContextResult) -> dict[str, float]:
    """Flat MLflow metrics `long_context/<model>/len_<L>/<name>` (characters MLflow refuses in a
    key, such as the parentheses of `ttt_linear (seed1)`, become `_`)."""
    flat: dict[str, float] = {}
    for row in result.rows:
        prefix = f"{STEM}/{_METRIC_UNSAFE.sub('_', row.model)}/len_{row.length}"
        values = {
            "loss": row.loss,
            "loss_diff_vs_reference": row.loss_diff_vs_reference,
            "diff_lo": row.diff_ci95[0],
            "diff_hi": row.diff_ci95[1],
            "niah_accuracy": row.niah_accuracy,
            "state_bytes": row.state_bytes,
            "decode_ms_per_token": row.decode_ms_per_token,
            "peak_rss_mb": row.peak_rss_mb,
        }
        flat.update({f"{prefix}/{k}": float(v) for k, v in values.items() if v is not None})
    return flat


def _table(result: LongContextResult) -> list[dict]:
    out = []
    for r in result.rows:
        niah = "" if r.niah_accuracy is None else (
            f"{r.niah_accuracy:.2f} [{r.niah_ci95[0]:.2f}, {r.niah_ci95[1]:.2f}]"
        )  # fmt: skip
        diff = "reference" if r.model == result.reference else (
            f"{r.loss_diff_vs_reference:+.4f} [{r.diff_ci95[0]:+.4f}, {r.diff_ci95[1]:+.4f}]"
        )  # fmt: skip
        out.append({
            "model": r.model,
            "length": r.length,
            "n": r.sequences,
            "loss (2nd half)": f"{r.loss:.4f}",
            "vs reference [95% CI]": diff,
            "passkey [95% CI]": niah,
            "state MiB": f"{r.state_bytes / 2**20:.3f}",
            "decode ms/token": f"{r.decode_ms_per_token:.2f}",
            "peak MB": f"{r.peak_rss_mb:.0f}",
        })  # fmt: skip
    return out


COLUMNS = ["model", "length", "n", "loss (2nd half)", "vs reference [95% CI]",
           "passkey [95% CI]", "state MiB", "decode ms/token", "peak MB"]  # fmt: skip


def summarize(result: LongContextResult) -> str:
    return text_table(_table(result), COLUMNS)


def markdown(result: LongContextResult) -> str:
    """The rows as a Markdown table, with what each column means."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in _table(result)]
    chance = "" if result.niah_chance is None else f" (chance {result.niah_chance:.2f})"
    lines += [
        "",
        "- loss (2nd half): mean next-token loss of the second half of each sequence of that "
        "length; the same val sequences for every model.",
        f"- vs reference: the loss minus {result.reference}'s, with a paired bootstrap 95% "
        "interval over sequences; an interval that excludes 0 is a difference the data support.",
        f"- passkey: retrieval accuracy at that context{chance}, Wilson 95% interval.",
        "- state: the decode cache after a prompt of that length; decode: mean ms per token "
        "after it (batch 1); peak: memory of that prefill and decode above the process's.",
    ]
    return "\n".join(lines) + "\n"


def check_out_dir(out: Path | None) -> Path:
    """`--out`, required (several models have no one folder to write next to) and writable."""
    if out is None:
        raise EvalInputError("long-context compares several models; pass --out DIR")
    if problem := output_dir_problem(out):
        raise EvalInputError(f"--out {problem}")
    return out


def read_long_context(path: Path | str) -> LongContextResult:
    return LongContextResult.model_validate_json(Path(path).read_text())
