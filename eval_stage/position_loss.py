"""`position-loss`: mean next-token loss by token index, at the training length and beyond.

For each length L = multiplier x train_len, sequences of L + 1 tokens are cut back to back from
the start of the val stream (consecutive val rows concatenated, so for L longer than a row a
sequence spans several rows and the document boundaries inside them, as training rows do).
Token index t (1-based) is the t-th predicted token, made after reading t tokens. Per-position
means are grouped into buckets of token indices [start, end], log-spaced or of equal width.
Each bucket's 95% interval is a bootstrap over sequences of its mean (`eval_stage.bootstrap`):
a sequence's tokens share one context, so the sequence, not the token, is the unit resampled.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from data_stage import ShardDataset

from .bootstrap import CONFIDENCE, format_interval, mean_interval
from .config import PositionLossConfig
from .data import available_sequences, check_fits, long_sequences, open_val, stream_length
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .perplexity import token_losses
from .results import EvalResult, Role, metric_key, text_table

EVAL = "position-loss"


class BucketRow(BaseModel):
    """Mean loss over token indices start..end (inclusive, 1-based) at sequence length `length`,
    over `sequences` sequences; `loss_lo`..`loss_hi` is its 95% bootstrap interval."""

    role: Role
    length: int
    start: int
    end: int
    mean_loss: float
    loss_lo: float
    loss_hi: float
    sequences: int
    tokens: int


def bucket_edges(length: int, n_buckets: int, kind: str) -> list[int]:
    """Edges 1 = e_0 < ... < e_k = length + 1 (k <= n_buckets); bucket i is [e_i, e_{i+1}).
    Log-spaced buckets are narrow at the start, where the loss falls fastest."""
    space = np.geomspace if kind == "log" else np.linspace
    return np.unique(np.round(space(1, length + 1, n_buckets + 1)).astype(np.int64)).tolist()


@torch.no_grad()
def losses_by_position(model: nn.Module, sequences: np.ndarray, batch_size: int) -> np.ndarray:
    """Next-token loss of every sequence (n, L + 1) at every position: (n, L) float64."""
    parts = [
        token_losses(model, sequences[start : start + batch_size]).double().cpu().numpy()
        for start in range(0, len(sequences), batch_size)
    ]
    return np.concatenate(parts)


def bucket_rows(
    losses: np.ndarray, edges: list[int], role: Role, samples: int, seed: int
) -> list[BucketRow]:
    """Rows of `bucket_edges` buckets from per-sequence, per-position losses (n, L) (column 0 =
    token index 1), each with the bootstrap interval of its mean (`samples` resamples, `seed`)."""
    n, length = losses.shape
    spans = list(itertools.pairwise(edges))
    per_sequence = np.stack([losses[:, lo - 1 : hi - 1].mean(axis=1) for lo, hi in spans], 1)
    lows, highs = mean_interval(per_sequence, samples, seed)  # (buckets,) each
    return [
        BucketRow(
            role=role,
            length=length,
            start=lo,
            end=hi - 1,
            mean_loss=float(per_sequence[:, i].mean()),
            loss_lo=float(lows[i]),
            loss_hi=float(highs[i]),
            sequences=n,
            tokens=(hi - lo) * n,
        )
        for i, (lo, hi) in enumerate(spans)
    ]


def _sequence_counts(ds: ShardDataset, lengths: list[int], wanted: int) -> dict[int, int]:
    counts = {L: min(wanted, available_sequences(ds, L)) for L in lengths}
    too_long = [L for L, n in counts.items() if n == 0]
    if too_long:
        raise EvalInputError(
            f"{ds.directory}: the val split holds {stream_length(ds)} tokens, fewer than one "
            f"sequence of {too_long[0] + 1}; use smaller --multipliers or --train-len, or more "
            "val data"
        )
    return counts


def evaluate_position_loss(
    model: LoadedModel, config: PositionLossConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """Loss-vs-token-index curves of `model` (and `baseline`) at each configured length."""
    ds = open_val(config.data, verify=config.verify_data)
    train_len = config.train_len or model.info.get("seq_len") or ds.seq_len
    lengths = [m * train_len for m in config.multipliers]
    counts = _sequence_counts(ds, lengths, config.sequences)
    pairs = roles(model, baseline)
    for _, loaded in pairs:
        check_fits(ds, loaded)
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    samples, seed = config.bootstrap_samples, config.bootstrap_seed
    for role, loaded in pairs:
        for L in lengths:
            losses = losses_by_position(
                loaded.model, long_sequences(ds, L, counts[L]), config.batch_size
            )
            edges = bucket_edges(L, config.n_buckets, config.buckets)
            buckets = bucket_rows(losses, edges, role, samples, seed)
            rows += [b.model_dump() for b in buckets]
            whole = losses.mean(axis=1)  # every sequence has L predicted tokens
            last = buckets[-1]
            stats = {
                "mean_loss": (whole.mean(), *mean_interval(whole, samples, seed)),
                "last_bucket_loss": (last.mean_loss, last.loss_lo, last.loss_hi),
            }
            for name, values in stats.items():
                for suffix, value in zip(("", "_lo", "_hi"), values, strict=True):
                    metrics[metric_key(EVAL, role, f"len_{L}", name + suffix)] = float(value)
    return EvalResult(
        eval=EVAL,
        device=describe_device(model_device(model.model)),
        models=[model_info(m, r) for r, m in pairs],
        config={**config.model_dump(mode="json"), "train_len": train_len},
        metrics=metrics,
        tables={
            "buckets": rows,
            "sequences": [{"length": L, "sequences": counts[L]} for L in lengths],
        },
        notes=[
            f"lengths {lengths} (train_len {train_len}); sequences of L + 1 tokens cut back to "
            "back from the start of the val stream, i.e. consecutive val rows concatenated",
            f"{CONFIDENCE:.0%} intervals: percentile bootstrap over sequences, {samples} "
            f"resamples, seed {seed}",
        ],
    )


def summarize(result: EvalResult) -> str:
    """Per (role, length): mean loss over all positions (with its 95% interval), in the first
    bucket and in the last bucket (its token range, loss and interval)."""
    rows = [BucketRow.model_validate(r) for r in result.tables["buckets"]]
    table = []
    for role, length in dict.fromkeys((r.role, r.length) for r in rows):
        mine = [r for r in rows if r.role == role and r.length == length]
        metric = {
            name: result.metrics[metric_key(EVAL, role, f"len_{length}", name)]
            for name in ("mean_loss", "mean_loss_lo", "mean_loss_hi")
        }
        table.append(
            {
                "role": role,
                "length": length,
                "sequences": mine[0].sequences,
                "mean loss": metric["mean_loss"],
                "95% CI": format_interval(metric["mean_loss_lo"], metric["mean_loss_hi"]),
                "first bucket": mine[0].mean_loss,
                "last bucket": f"{mine[-1].start}-{mine[-1].end}",
                "last loss": mine[-1].mean_loss,
                "last 95% CI": format_interval(mine[-1].loss_lo, mine[-1].loss_hi),
            }
        )
    columns = list(dict.fromkeys(k for row in table for k in row))
    return text_table(table, columns)
