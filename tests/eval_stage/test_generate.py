"""generate: streamed text, multi-turn with the cache kept, the CLI on stdin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from eval_stage import Conversation, EvalInputError, GenerateConfig, chat, generate_text, open_model

from .helpers import VOCAB, as_loaded, run_cli, tiny_model

GREEDY = GenerateConfig(max_new_tokens=6)


def test_streamed_pieces_add_up_to_the_reply_and_greedy_is_repeatable(model_dir: Path) -> None:
    loaded = open_model(model_dir)
    pieces: list[str] = []
    reply = generate_text(loaded, "def f(x):", GREEDY, pieces.append)
    assert "".join(pieces) == reply
    assert generate_text(loaded, "def f(x):", GREEDY) == reply


def test_turns_continue_one_cache(model_dir: Path) -> None:
    loaded = open_model(model_dir)
    tok = loaded.tokenizer
    conversation = chat(loaded, GREEDY, ["hello\n", "world\n"])
    first = 1 + len(tok.encode("hello")) + 6  # BOS + prompt + generated (no EOS in 6 greedy steps)
    assert int(conversation.cache.offsets[0]) == first + len(tok.encode("\nworld")) + 6
    assert conversation.turns == 2


def test_seeded_sampling_is_reproducible_per_turn(model_dir: Path) -> None:
    config = GenerateConfig(max_new_tokens=8, temperature=1.0, top_k=50, seed=3)
    replies = []
    for _ in range(2):
        conversation = Conversation(open_model(model_dir), config)
        replies.append([conversation.say("a"), conversation.say("b")])
    assert replies[0] == replies[1]


def test_a_model_without_tokenizer_is_refused() -> None:
    with pytest.raises(EvalInputError, match="no tokenizer"):
        generate_text(as_loaded(tiny_model(vocab_size=VOCAB)), "x", GREEDY)


def test_cli_interactive_answers_each_stdin_line_until_eof(
    model_dir: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("first line\nsecond line\n"))
    argv = ["generate", "--model", str(model_dir), "--interactive", "--max-new-tokens", "4"]
    assert run_cli(argv) == 0
    assert capsys.readouterr().out.count("\n") == 2


def test_cli_one_prompt(model_dir: Path, capsys) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "import os", "--max-new-tokens", "3"]
    assert run_cli(argv) == 0
    expected = generate_text(open_model(model_dir), "import os", GenerateConfig(max_new_tokens=3))
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "pass --prompt TEXT, or --interactive"),
     (["--prompt", "x", "--temperature", "-1"], "temperature"),
     (["--prompt", "x", "--top-p", "1.5"], "top_p")],
)  # fmt: skip
def test_cli_refuses_bad_generation_flags(model_dir: Path, extra, message, capsys) -> None:
    assert run_cli(["generate", "--model", str(model_dir), *extra]) == 2
    assert message in capsys.readouterr().err
