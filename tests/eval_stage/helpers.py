"""Models and exports for the eval_stage tests (built directly, no trainer involved)."""

from __future__ import annotations

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


class UniformLM(nn.Module):
    """Stub LM whose logits are all zero: every next token has probability 1 / vocab_size."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.config = ModelConfig.from_preset("debug_tiny", vocab_size=vocab_size)
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor) -> ModelOutput:
        B, T = input_ids.shape
        return ModelOutput(logits=self.scale * torch.ones(B, T, self.config.vocab_size))


def as_loaded(model: nn.Module, tokenizer=None, **info) -> LoadedModel:
    return LoadedModel(model=model, config=model.config, tokenizer=tokenizer, info=info)


def run_cli(argv: list[str]) -> int:
    """`python -m eval_stage ARGV` in this process; argparse's own errors exit via SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)
