"""`latency`: prefill throughput and per-token decode latency against context length, batch 1.

For each model and context length c: prefill c random ids into a fresh cache (median of
`repeats` wall times; the first context is also run once untimed, as warm-up), then `warmup`
untimed and `decode_tokens` timed single-token `model.decode` calls from that cache; the decode
latency is the median per token, and its mean is reported beside it: a chunked model (TTT-E2E's
inner step, a chunk update) pays a step every few tokens, which the median skips and the mean
spreads over them. A TTT model's decode cost should not grow with c; attention's does (attention
reads a KV store that holds every token so far).
"""

from __future__ import annotations

import statistics
import time

import torch
from pydantic import BaseModel
from torch import nn

from .config import LatencyConfig
from .device import describe_device, model_device, synchronize, time_calls
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "latency"


class LatencyRow(BaseModel):
    role: Role
    mixer: str
    context: int
    prefill_s: float  # median wall seconds to prefill `context` tokens
    prefill_tokens_per_s: float
    decode_ms: float  # median wall milliseconds per decoded token after `context` tokens
    # their mean: the occasional chunk step spread over the tokens (None in older results)
    decode_ms_mean: float | None = None
    cache_bytes: int  # bytes the cache has allocated after the prefill and the decoded tokens
    # bytes of the state right after the prefill: attention's keys and values of `context`
    # tokens, a TTT layer's fixed state (None in older results)
    state_bytes: int | None = None


@torch.no_grad()
def measure_context(
    model: nn.Module, context: int, config: LatencyConfig, role: Role, *, warm_up_prefill: bool
) -> LatencyRow:
    """Prefill and decode timings at one context length (see the module docstring)."""
    device = model_device(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(config.seed + context)
    ids = torch.randint(0, vocab, (1, context), generator=gen).to(device)
    steps = torch.randint(0, vocab, (config.warmup + config.decode_tokens, 1, 1), generator=gen)

    def prefill():
        return model(ids, cache=model.new_cache(1, decode_mode=config.decode_mode)).cache

    prefill_times, cache = time_calls(
        prefill, device, repeats=config.repeats, warmup=int(warm_up_prefill)
    )
    state_bytes = cache.nbytes()  # a fresh cache after one prefill holds exactly its tokens
    decode_times = []
    for i, token in enumerate(steps.to(device)):
        synchronize(device)
        start = time.perf_counter()
        cache = model.decode(token, cache).cache
        synchronize(device)
        if i >= config.warmup:
            decode_times.append(time.perf_counter() - start)
    prefill_s = statistics.median(prefill_times)
    return LatencyRow(
        role=role,
        mixer=model.config.mixer_name,
        context=context,
        prefill_s=prefill_s,
        prefill_tokens_per_s=context / prefill_s,
        decode_ms=1e3 * statistics.median(decode_times),
        decode_ms_mean=1e3 * statistics.fmean(decode_times),
        cache_bytes=cache.nbytes(),
        state_bytes=state_bytes,
    )


def evaluate_latency(
    model: LoadedModel, config: LatencyConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """Latency rows of `model` (and `baseline`) at every context length, on the models' device."""
    pairs = roles(model, baseline)
    rows: list[LatencyRow] = []
    for role, loaded in pairs:
        for i, context in enumerate(config.contexts):
            rows.append(
                measure_context(loaded.model, context, config, role, warm_up_prefill=i == 0)
            )
    metrics: dict[str, float] = {}
    for row in rows:
        metrics[metric_key(EVAL, row.role, f"ctx_{row.context}", "decode_ms")] = row.decode_ms
        metrics[metric_key(EVAL, row.role, f"ctx_{row.context}", "decode_ms_mean")] = (
            row.decode_ms_mean
        )
        metrics[metric_key(EVAL, row.role, f"ctx_{row.context}", "prefill_tokens_per_s")] = (
            row.prefill_tokens_per_s
        )
    for role, _ in pairs:
        mine = [r for r in rows if r.role == role]
        metrics[metric_key(EVAL, role, "decode_ms_ratio_last_first")] = (
            mine[-1].decode_ms / mine[0].decode_ms
        )
    device = describe_device(model_device(model.model))
    return EvalResult(
        eval=EVAL,
        device=device,
        models=[model_info(m, r) for r, m in pairs],
        config=config.model_dump(mode="json"),
        metrics=metrics,
        tables={"latency": [r.model_dump() for r in rows]},
        notes=[
            f"batch 1, random ids, {device.type} ({device.name}), {device.threads} threads; "
            "wall-clock medians (decode: also the mean, which counts chunk steps)"
        ],
    )


def summarize(result: EvalResult) -> str:
    """One row per context: prefill tokens/s and decode ms/token of each model side by side."""
    rows = [LatencyRow.model_validate(r) for r in result.tables["latency"]]
    by_context: dict[int, dict] = {}
    columns = ["context"]
    for r in rows:
        label = f"{r.role}:{r.mixer}"
        line = by_context.setdefault(r.context, {"context": r.context})
        line[f"{label} prefill tok/s"] = r.prefill_tokens_per_s
        line[f"{label} decode ms"] = r.decode_ms
        line[f"{label} decode ms mean"] = r.decode_ms_mean
        for name in (f"{label} prefill tok/s", f"{label} decode ms", f"{label} decode ms mean"):
            if name not in columns:
                columns.append(name)
    return text_table(list(by_context.values()), columns)
