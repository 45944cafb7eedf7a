"""Models and exports for the eval_stage tests (built directly, no trainer involved)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eval_stage.cli import main
from eval_stage.models import LoadedModel
from train_stage.export import save_export
from ttt_core import TTTLM, ModelConfig, ModelOutput

VOCAB = 400  # the tests' tokenizer


def tiny_model(mixer: str = "ttt_linear", seed: int = 0, vocab_size: int = VOCAB) -> TTTLM:
    torch.manual_seed(seed)
    return TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=vocab_size, mixer=mixer)).eval()


def write_export(model: TTTLM, out: Path, tokenizer_dir: Path, step: int = 7) -> Path:
    """An export directory as `python -m train_stage export` writes it."""
    info = {"step": step, "tokens_seen": 1000, "source_checkpoint": "none", "run_dir": str(out),
            "mlflow_run_id": None}  # fmt: skip
    return save_export(model, out, tokenizer_dir, info)


@dataclass
class IdsCache:
    """A stub LM's cache: every id its rows have seen (B, t)."""

    ids: torch.Tensor

    def select(self, rows: list[int]) -> IdsCache:
        return IdsCache(self.ids[rows])


class UniformLM(nn.Module):
    """Stub LM whose logits are all zero: every next token has probability 1 / vocab_size.
    Stubs continue a cache as TTTLM does: the logits of `input_ids` after the cached ids."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.config = ModelConfig.from_preset("debug_tiny", vocab_size=vocab_size)
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, cache: IdsCache | None = None,
                use_cache: bool = False) -> ModelOutput:  # fmt: skip
        seen = input_ids if cache is None else torch.cat([cache.ids, input_ids], dim=1)
        logits = self.logits(seen)[:, -input_ids.shape[1] :]
        keep = use_cache or cache is not None
        return ModelOutput(logits=logits, cache=IdsCache(seen) if keep else None)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        return self.scale * torch.ones(B, T, self.config.vocab_size)


def as_loaded(model: nn.Module, tokenizer=None, **info) -> LoadedModel:
    return LoadedModel(model=model, config=model.config, tokenizer=tokenizer, info=info)


def run_cli(argv: list[str]) -> int:
    """`python -m eval_stage ARGV` in this process; argparse's own errors exit via SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


class ConstantLM(UniformLM):
    """Stub LM that ignores its input: the same seeded random logits at every position."""

    def __init__(self, vocab_size: int, seed: int = 0):
        super().__init__(vocab_size)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("bias", 3 * torch.randn(vocab_size, generator=generator))

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        return self.bias.expand(B, T, -1).clone()


class InductionLM(UniformLM):
    """Stub LM that copies perfectly: at position t it predicts the token that followed the
    earlier position j < t whose preceding tokens match those before t the longest (ties: the
    latest), with logit 10; all else 0. No earlier match: uniform."""

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        same = input_ids[:, :, None] == input_ids[:, None, :]  # (B, t, j)
        run = torch.zeros(B, T, T, dtype=torch.long)  # length of the common suffix ending at t, j
        run[:, 0, :] = same[:, 0, :].long()
        for t in range(1, T):
            run[:, t, 0] = same[:, t, 0].long()
            run[:, t, 1:] = same[:, t, 1:] * (run[:, t - 1, :-1] + 1)
        run = run.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), 0)  # only j < t
        latest_best = T - 1 - run.flip(-1).argmax(-1)  # (B, T)
        follower = input_ids.gather(1, (latest_best + 1).clamp(max=T - 1))
        logits = torch.zeros(B, T, self.config.vocab_size)
        logits.scatter_(2, follower[:, :, None], 10.0)
        logits[run.amax(-1) == 0] = 0.0
        return logits
