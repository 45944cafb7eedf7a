"""`perplexity`: validation loss counted token by token.

loss = (sum of next-token cross entropy over every predicted token) / (number of predicted
tokens), accumulated in float64 across batches of any size; perplexity = exp(loss).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from .config import PerplexityConfig
from .data import check_fits, open_val, row_batches
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "perplexity"


class PerplexityRow(BaseModel):
    role: Role
    loss: float
    perplexity: float
    tokens: int
    sequences: int


@torch.no_grad()
def token_losses(model: nn.Module, rows: np.ndarray) -> Tensor:
    """Per-token next-token CE (b, T) float32 of rows (b, T + 1): inputs row[:-1], targets
    row[1:] (the model's labels are already shifted)."""
    ids = torch.as_tensor(rows, dtype=torch.long, device=model_device(model))
    logits = model(ids[:, :-1]).logits  # (b, T, V)
    return F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")


def measure(model: nn.Module, batches: Iterable[np.ndarray], role: Role = "model") -> PerplexityRow:
    """Exact mean loss over every predicted token of `batches` ((b, T + 1) id arrays)."""
    total, tokens, sequences = 0.0, 0, 0
    for rows in batches:
        losses = token_losses(model, rows)
        total += float(losses.double().sum())
        tokens += losses.numel()
        sequences += losses.shape[0]
    loss = total / tokens
    return PerplexityRow(
        role=role, loss=loss, perplexity=math.exp(loss), tokens=tokens, sequences=sequences
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
        row = measure(loaded.model, batches, role)
        rows.append(row.model_dump())
        for name in ("loss", "perplexity", "tokens"):
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
            "per-token CE / predicted tokens (float64), perplexity = exp(loss)"
        ],
    )


def summarize(result: EvalResult) -> str:
    rows = result.tables["perplexity"]
    return text_table(rows, ["role", "loss", "perplexity", "tokens", "sequences"])
