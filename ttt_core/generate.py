"""Text generation: prefill the prompts, then a plain loop of sample -> decode one token.

Prompts of different lengths (or rows of a cache at different positions) are prefilled one row
at a time and their caches stacked, so no padding ever enters a row's state. The returned cache
holds the state after the prompt and every generated token: pass it back with the next user turn
(multi-turn) and only the new turn is processed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .cache import Cache
from .model import TTTLM


@dataclass
class GenerationResult:
    tokens: Tensor  # (B, n) generated ids; after a row's eos the row is filled with eos_id
    lengths: Tensor  # (B,) generated tokens per row, eos included
    cache: Cache  # after prompt + generated tokens


class TokenStream:
    """Iterate to receive each step's tokens (B,) as they are made; `result` once exhausted."""

    def __init__(self, steps: Generator[Tensor, None, GenerationResult]):
        self._steps = steps
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[Tensor]:
        self.result = yield from self._steps


def sample_next(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row from logits (B, V): argmax when temperature is 0, else sampling from
    softmax(logits / temperature) restricted to the top_k tokens and the top_p nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p; the first always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _validate(
    temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int
) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@torch.no_grad()
def prefill(
    model: TTTLM,
    prompts: list[Tensor],
    cache=None,
    *,
    decode_mode: Literal["online", "chunked"] | None = None,
) -> tuple[Tensor, object]:
    """Run each prompt (1-D ids) through the dual form; rows at one position with one length go
    as a batch, otherwise one by one. Returns the last-token logits (B, V) and the cache."""
    if any(p.numel() == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if cache is None:
        cache = model.new_cache(len(prompts), decode_mode=decode_mode)
    elif cache.batch_size != len(prompts):
        raise ValueError(f"cache holds {cache.batch_size} rows but {len(prompts)} prompts given")
    same_length = len({p.numel() for p in prompts}) == 1
    same_position = bool((cache.offsets == cache.offsets[0]).all())
    if same_length and same_position:
        out = model(torch.stack(prompts), cache=cache)
        return out.logits[:, -1], out.cache
    rows = [model(p[None], cache=c) for p, c in zip(prompts, cache.split(), strict=True)]
    logits = torch.cat([r.logits[:, -1] for r in rows])
    return logits, type(cache).stack([r.cache for r in rows])


def generate(
    model: TTTLM,
    input_ids: Tensor | list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    cache=None,
    stream: bool = False,
    decode_mode: Literal["online", "chunked"] | None = None,
) -> GenerationResult | TokenStream:
    """Generate up to `max_new_tokens` per row after `input_ids` ((B, T) or ragged lists).

    Greedy when temperature is 0; reproducible for a given `seed`. `cache` continues earlier
    turns; `decode_mode` picks the decode of a fresh cache (default: the model config's).
    With `stream=True` returns a `TokenStream` yielding each step's tokens (B,).
    """
    _validate(temperature, top_k, top_p, max_new_tokens)
    if model.training:
        raise RuntimeError("generate needs model.eval(): decoding is inference only")
    device = model.embed.weight.device
    prompts = [torch.as_tensor(p, dtype=torch.long, device=device) for p in input_ids]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    steps = _decode_loop(
        model,
        prompts,
        max_new_tokens,
        cache,
        decode_mode,
        eos_id,
        dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator),
    )
    token_stream = TokenStream(steps)
    if stream:
        return token_stream
    for _ in token_stream:
        pass
    return token_stream.result


@torch.no_grad()
def _decode_loop(
    model: TTTLM,
    prompts: list[Tensor],
    max_new_tokens: int,
    cache,
    decode_mode,
    eos_id: int | None,
    sampling: dict,
) -> Generator[Tensor, None, GenerationResult]:
    """Yields each step's tokens (B,); returns the GenerationResult."""
    logits, cache = prefill(model, prompts, cache, decode_mode=decode_mode)
    B = len(prompts)
    finished = torch.zeros(B, dtype=torch.bool, device=logits.device)
    lengths = torch.zeros(B, dtype=torch.long, device=logits.device)
    tokens = []
    for _ in range(max_new_tokens):
        token = sample_next(logits, **sampling)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
        active = ~finished
        lengths += active.long()
        tokens.append(token)
        yield token
        out = model.decode(token[:, None], cache)
        logits = out.logits[:, -1]
        if eos_id is None:  # no row can have ended
            cache = out.cache
        else:
            # Rows that already ended keep their state: the filler token never reaches it.
            cache = out.cache.where_rows(active, cache)
            finished |= token == eos_id
            if bool(finished.all()):
                break
    return GenerationResult(tokens=torch.stack(tokens, dim=1), lengths=lengths, cache=cache)
