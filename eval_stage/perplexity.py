"""`perplexity`: validation loss counted token by token.

loss = (sum of next-token cross entropy over every predicted token) / (number of predicted
tokens), accumulated in float64 across batches of any size; perplexity = exp(loss).
The 95% interval is a bootstrap over sequences (rows) of that ratio (`eval_stage.bootstrap`);
the perplexity interval is exp of the loss interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from .bootstrap import CONFIDENCE, format_interval, ratio_interval
from .config import PerplexityConfig
from .data import check_fits, open_val, row_batches
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "perplexity"
METRICS = ("loss", "loss_lo", "loss_hi", "perplexity", "perplexity_lo", "perplexity_hi", "tokens")


class PerplexityRow(BaseModel):
    """`loss_lo`..`loss_hi`: 95% bootstrap interval of the loss; perplexity's is its exp."""

    role: Role
    loss: float
    loss_lo: float
    loss_hi: float
    perplexity: float
    perplexity_lo: float
    perplexity_hi: float
    tokens: int
    sequences: int


@torch.no_grad()
def token_losses(model: nn.Module, rows: np.ndarray) -> Tensor:
    """Per-token next-token CE (b, T) float32 of rows (b, T + 1): inputs row[:-1], targets
    row[1:] (the model's labels are already shifted)."""
    ids = torch.as_tensor(rows, dtype=torch.long, device=model_device(model))
    logits = model(ids[:, :-1]).logits  # (b, T, V)
    return F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")


def row_loss_sums(model: nn.Module, batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `batches` ((b, T + 1) id arrays): float64 loss sum (n,), predicted tokens (n,)."""
    sums, counts = [], []
    for rows in batches:
        losses = token_losses(model, rows).double()
        sums += losses.sum(dim=1).tolist()
        counts += [losses.shape[1]] * losses.shape[0]
    return np.array(sums, dtype=np.float64), np.array(counts, dtype=np.float64)


def measure(
    model: nn.Module,
    batches: Iterable[np.ndarray],
    role: Role = "model",
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
) -> PerplexityRow:
    """Exact mean loss over every predicted token of `batches` ((b, T + 1) id arrays), with its
    95% bootstrap interval over the rows."""
    sums, counts = row_loss_sums(model, batches)
    tokens = int(counts.sum())
    loss = math.fsum(sums) / tokens
    lo, hi = ratio_interval(sums, counts, bootstrap_samples, bootstrap_seed)
    return PerplexityRow(
        role=role,
        loss=loss,
        loss_lo=float(lo),
        loss_hi=float(hi),
        perplexity=math.exp(loss),
        perplexity_lo=math.exp(lo),
        perplexity_hi=math.exp(hi),
        tokens=tokens,
        sequences=len(counts),
    )


def evaluate_perplexity(
    model: LoadedModel, config: PerplexityConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """Validation loss and perplexity of `model` (and `baseline`) on `config.data`'s val split."""
    ds = open_val(config.data, verify=config.verify_data)
    seq_len = config.seq_len or ds.seq_len
    if seq_len > ds.seq_len:
        raise EvalInputError(
            f"seq_len {seq_len} is longer than the shards' rows ({ds.seq_len} predicted tokens); "
            "use --seq-len <= that, or position-loss for longer contexts"
        )
    pairs = roles(model, baseline)
    for _, loaded in pairs:
        check_fits(ds, loaded)
    rows, metrics = [], {}
    for role, loaded in pairs:
        batches = row_batches(ds, config.batch_size, seq_len, config.max_batches)
        row = measure(loaded.model, batches, role, config.bootstrap_samples, config.bootstrap_seed)
        rows.append(row.model_dump())
        for name in METRICS:
            metrics[metric_key(EVAL, role, name)] = float(getattr(row, name))
    return EvalResult(
        eval=EVAL,
        device=describe_device(model_device(model.model)),
        models=[model_info(m, r) for r, m in pairs],
        config={**config.model_dump(mode="json"), "seq_len": seq_len},
        metrics=metrics,
        tables={"perplexity": rows},
        notes=[
            f"consecutive val rows cropped to {seq_len} predicted tokens; loss = sum of "
            "per-token CE / predicted tokens (float64), perplexity = exp(loss)",
            f"{CONFIDENCE:.0%} intervals: percentile bootstrap over rows, "
            f"{config.bootstrap_samples} resamples, seed {config.bootstrap_seed}",
        ],
    )


def summarize(result: EvalResult) -> str:
    """One line per role: loss and perplexity, each with its 95% interval."""
    table = []
    for raw in result.tables["perplexity"]:
        row = PerplexityRow.model_validate(raw)
        table.append(
            {
                "role": row.role,
                "loss": row.loss,
                "loss 95% CI": format_interval(row.loss_lo, row.loss_hi),
                "perplexity": row.perplexity,
                "perplexity 95% CI": format_interval(row.perplexity_lo, row.perplexity_hi),
                "tokens": row.tokens,
                "sequences": row.sequences,
            }
        )
    return text_table(table, list(table[0]))
