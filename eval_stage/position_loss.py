"""`position-loss`: mean next-token loss by token index, at the training length and beyond.

For each length L = multiplier x train_len, sequences of L + 1 tokens are cut back to back from
the start of the val stream (consecutive val rows concatenated, so for L longer than a row a
sequence spans several rows and the document boundaries inside them, as training rows do).
Token index t (1-based) is the t-th predicted token, made after reading t tokens. Per-position
means are grouped into buckets of token indices [start, end], log-spaced or of equal width.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from data_stage import ShardDataset

from .config import PositionLossConfig
from .data import available_sequences, check_fits, long_sequences, open_val, stream_length
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .perplexity import token_losses
from .results import EvalResult, Role, metric_key, text_table

EVAL = "position-loss"


class BucketRow(BaseModel):
    """Mean loss over token indices start..end (inclusive, 1-based) at sequence length `length`."""

    role: Role
    length: int
    start: int
    end: int
    mean_loss: float
    tokens: int


def bucket_edges(length: int, n_buckets: int, kind: str) -> list[int]:
    """Edges 1 = e_0 < ... < e_k = length + 1 (k <= n_buckets); bucket i is [e_i, e_{i+1}).
    Log-spaced buckets are narrow at the start, where the loss falls fastest."""
    space = np.geomspace if kind == "log" else np.linspace
    return np.unique(np.round(space(1, length + 1, n_buckets + 1)).astype(np.int64)).tolist()


@torch.no_grad()
def mean_loss_by_position(model: nn.Module, sequences: np.ndarray, batch_size: int) -> np.ndarray:
    """Mean next-token loss at each position over sequences (n, L + 1): (L,) float64."""
    sums = np.zeros(sequences.shape[1] - 1, dtype=np.float64)
    for start in range(0, len(sequences), batch_size):
        losses = token_losses(model, sequences[start : start + batch_size])
        sums += losses.double().sum(dim=0).cpu().numpy()
    return sums / len(sequences)


def bucket_rows(
    per_position: np.ndarray, sequences: int, edges: list[int], role: Role
) -> list[BucketRow]:
    """Rows of `bucket_edges` buckets from per-position means (index 0 = token index 1)."""
    return [
        BucketRow(
            role=role,
            length=len(per_position),
            start=lo,
            end=hi - 1,
            mean_loss=float(per_position[lo - 1 : hi - 1].mean()),
            tokens=(hi - lo) * sequences,
        )
        for lo, hi in itertools.pairwise(edges)
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
    for role, loaded in pairs:
        for L in lengths:
            per_position = mean_loss_by_position(
                loaded.model, long_sequences(ds, L, counts[L]), config.batch_size
            )
            buckets = bucket_rows(
                per_position, counts[L], bucket_edges(L, config.n_buckets, config.buckets), role
            )
            rows += [b.model_dump() for b in buckets]
            metrics[metric_key(EVAL, role, f"len_{L}", "mean_loss")] = float(per_position.mean())
            metrics[metric_key(EVAL, role, f"len_{L}", "last_bucket_loss")] = buckets[-1].mean_loss
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
            "back from the start of the val stream, i.e. consecutive val rows concatenated"
        ],
    )


def summarize(result: EvalResult) -> str:
    """Per (role, length): mean loss over all positions, in the first and in the last bucket."""
    rows = [BucketRow.model_validate(r) for r in result.tables["buckets"]]
    table = []
    for role, length in dict.fromkeys((r.role, r.length) for r in rows):
        mine = [r for r in rows if r.role == role and r.length == length]
        table.append(
            {
                "role": role,
                "length": length,
                "mean loss": result.metrics[metric_key(EVAL, role, f"len_{length}", "mean_loss")],
                f"tokens {mine[0].start}-{mine[0].end}": mine[0].mean_loss,
                "last bucket": mine[-1].mean_loss,
            }
        )
    columns = list(dict.fromkeys(k for row in table for k in row))
    return text_table(table, columns)
