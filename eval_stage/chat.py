"""`generate`: text in, text out with the model's tokenizer, streamed as it is made.

A conversation is one token stream: the first turn starts with BOS (as every document in the
shards does), a later turn is appended to the previous reply after a newline (or, when the
model ended its reply with EOS, as a new document after BOS), and the cache returned by each
turn carries the whole history into the next, so only the new turn is processed. With a seed,
turn i samples with seed + i: reproducible, yet turns do not replay the same random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from data_stage import Tokenizer
from ttt_core import generate

from .config import GenerateConfig
from .errors import EvalInputError
from .models import LoadedModel

TextSink = Callable[[str], None]


class Conversation:
    """A model, its tokenizer and the cache of everything said so far."""

    def __init__(self, loaded: LoadedModel, config: GenerateConfig):
        if loaded.tokenizer is None:
            raise EvalInputError(
                f"{loaded.info.get('source', 'model')}: no tokenizer/ next to the weights; "
                "generate needs the run's tokenizer (re-export with `python -m train_stage export`)"
            )
        self.model = loaded.model
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.config = config
        self.cache = None
        self.turns = 0
        self._ended_with_eos = False

    def _turn_ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        if self.cache is None or self._ended_with_eos:
            return [tok.bos_id, *tok.encode(text)]
        return tok.encode("\n" + text)

    def say(self, text: str, on_text: TextSink | None = None) -> str:
        """Append `text`, generate a reply (streamed to `on_text` piece by piece), return it."""
        cfg, tok = self.config, self.tokenizer
        stream = generate(
            self.model,
            [self._turn_ids(text)],
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            eos_id=tok.eos_id,
            seed=None if cfg.seed is None else cfg.seed + self.turns,
            cache=self.cache,
            stream=True,
            decode_mode=cfg.decode_mode,
        )
        ids: list[int] = []
        shown = ""
        for step in stream:
            ids.append(int(step[0]))
            text_so_far = tok.decode(ids)
            # A byte-fallback character may be incomplete until its last byte arrives.
            if on_text is not None and not text_so_far.endswith("\ufffd"):
                on_text(text_so_far[len(shown) :])
                shown = text_so_far
        reply = tok.decode(ids)
        if on_text is not None and reply != shown:
            on_text(reply[len(shown) :])
        self.cache = stream.result.cache
        self.turns += 1
        self._ended_with_eos = bool(ids) and ids[-1] == tok.eos_id
        return reply


def generate_text(
    loaded: LoadedModel, prompt: str, config: GenerateConfig, on_text: TextSink | None = None
) -> str:
    """One prompt in, the generated continuation out (streamed to `on_text` when given)."""
    return Conversation(loaded, config).say(prompt, on_text)


def chat(
    loaded: LoadedModel,
    config: GenerateConfig,
    turns: Iterable[str],
    on_text: TextSink | None = None,
) -> Conversation:
    """Multi-turn: each item of `turns` (e.g. stdin lines) is a user turn, answered in order
    with the cache kept between turns; returns the conversation when `turns` ends."""
    conversation = Conversation(loaded, config)
    for turn in turns:
        conversation.say(turn.rstrip("\n"), on_text)
        if on_text is not None:
            on_text("\n")
    return conversation
