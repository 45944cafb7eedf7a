"""Engines on tiny random models, and jobs run to their end, for the serve_stage tests."""

from __future__ import annotations

import queue
from pathlib import Path

import torch

from serve_stage.engine import Done, Engine, Failed, Job, Outcome, SamplingParams
from serve_stage.sessions import SessionStore
from train_stage.export import save_export
from ttt_core import TTTLM, ModelConfig
from ttt_core.generate import generate

from ..helpers import HANG_GUARD_S
from ..ttt_core.helpers import STACKS

VOCAB = 512  # debug_tiny_data's tokenizer


class FakeTokenizer:
    """Id i >= 3 decodes to one letter, chr(ord("a") + (i - 3) % 26); 0-2 (pad, BOS, EOS)
    decode to nothing."""

    vocab_size, pad_id, bos_id, eos_id, hash = VOCAB, 0, 1, 2, "fake"

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") + 3 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + (int(i) - 3) % 26) for i in ids if int(i) >= 3)


def tiny_model(stack: str = "ttt_linear", seed: int = 0) -> TTTLM:
    """debug_tiny of `stack` with inner steps large enough that the TTT state matters."""
    torch.manual_seed(seed)
    overrides = {"eta_base": 0.5, **STACKS[stack]}
    model = TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, **overrides)).eval()
    for block in model.blocks:
        if hasattr(block.mixer, "eta_gate"):
            torch.nn.init.normal_(block.mixer.eta_gate.weight, std=1.0)
    return model


def make_engine(model: TTTLM, state_dir: Path, *, max_batch: int = 8, max_context: int = 4096,
                hot: int = 4, tokenizer=None, prefill_chunk: int = 2048) -> Engine:  # fmt: skip
    engine_box: list[Engine] = []
    store = SessionStore(state_dir, hot=hot, new_state=lambda: engine_box[0].new_state(),
                         model_config=model.config.model_dump(), device="cpu")  # fmt: skip
    engine = Engine(model, tokenizer or FakeTokenizer(), store, max_batch=max_batch,
                    max_context=max_context, prefill_chunk=prefill_chunk)  # fmt: skip
    engine_box.append(engine)
    return engine


class Waiter:
    """A job's sink: every event, in order; `outcome()` blocks until Done."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.seen: list = []

    def __call__(self, event) -> None:
        self.events.put(event)

    def outcome(self) -> Outcome:
        while True:
            event = self.events.get(timeout=HANG_GUARD_S)
            self.seen.append(event)
            if isinstance(event, Done):
                return event.outcome
            if isinstance(event, Failed):
                raise event.error


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def submit(engine: Engine, prompt: list[int], params: SamplingParams,
           session_id: str | None = None) -> Waiter:  # fmt: skip
    waiter = Waiter()
    engine.submit(Job(prompt, params, waiter, session_id=session_id))
    return waiter


def reference_tokens(model: TTTLM, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens of `ttt_core.generate` (chunked decode) for one prompt, alone."""
    return generate(model, [prompt], n, decode_mode="chunked").tokens[0].tolist()


def prompt_of(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=g).tolist()


def write_export(out: Path, tokenizer: Path, mixer: str) -> Path:
    """A debug_tiny export of `mixer` (random weights, seed 0) with `tokenizer` (512 ids)."""
    torch.manual_seed(0)
    model = TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, mixer=mixer)).eval()
    return save_export(model, out, tokenizer, {"step": 0, "tokens_seen": 0})
