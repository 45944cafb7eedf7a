"""`python -m eval_stage lm-eval`: lm-evaluation-harness through transformers on local tasks,
checked against a direct computation with the project's model (no transformers, no lm-eval).
Skipped when the optional extras are not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers not installed (optional extra [hf])")
pytest.importorskip("lm_eval", reason="lm-eval not installed (optional extra [lm-eval])")

from data_stage import load_tokenizer
from eval_stage.harness import CLOZE_YAML
from ttt_core import TTTLM

from .helpers import run_cli


def direct_scores(model: TTTLM, tokenizer, documents: list[dict]) -> list[tuple[float, bool]]:
    """(log p(target | context), every target token is the argmax) per document, the way
    lm-eval splits a pair: the target's ids are those of context + target after the context's."""
    scores = []
    with torch.no_grad():
        for doc in documents:
            context = tokenizer.encode(doc["context"])
            target = tokenizer.encode(doc["context"] + doc["target"])[len(context) :]
            ids = torch.tensor([context + target])
            logits = model(ids[:, :-1]).logits[0, len(context) - 1 :].float()
            expected = torch.tensor(target)
            loglik = logits.log_softmax(-1).gather(1, expected[:, None]).sum()
            scores.append((float(loglik), bool((logits.argmax(-1) == expected).all())))
    return scores


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def greedy_task(model: TTTLM, tokenizer, documents: list[dict], directory: Path) -> Path:
    """A local YAML task whose target is, where the text round-trips through the tokenizer, the
    model's own greedy next token, so its accuracy is not trivially zero for a random model."""
    rows = []
    for doc in documents:
        context = tokenizer.encode(doc["context"])
        with torch.no_grad():
            best = int(model(torch.tensor([context])).logits[0, -1].argmax())
        prefix, text = tokenizer.decode(context), tokenizer.decode([*context, best])
        target = text[len(prefix) :]
        round_trips = tokenizer.encode(doc["context"] + target) == [*context, best]
        if text.startswith(prefix) and round_trips:
            doc = {**doc, "target": target}
        rows.append(doc)
    directory.mkdir()
    data = directory / "greedy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = CLOZE_YAML.format(task="greedy_cloze", docs=json.dumps(str(data)))
    (directory / "greedy_cloze.yaml").write_text(yaml)
    return directory


def test_lm_eval_scores_equal_a_direct_computation(tmp_path, model_dir, shard_dir, tokenizer_dir):
    argv = ["lm-eval", "--model", str(model_dir), "--data", str(shard_dir), "--docs", "8",
            "--batch-size", "4"]  # fmt: skip
    assert run_cli([*argv, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "lm_eval.json").read_text())
    documents = read_jsonl(tmp_path / "out" / "lm_eval_tasks" / "ttt_cloze.jsonl")
    assert len(documents) == 8
    model = TTTLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    expected = direct_scores(model, tokenizer, documents)
    samples = sorted(result["tables"]["samples"], key=lambda r: r["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(8))
    for sample, (loglik, greedy) in zip(samples, expected, strict=True):
        assert sample["loglikelihood"] == pytest.approx(loglik, abs=1e-4)
        assert sample["is_greedy"] == greedy
    accuracy = sum(g for _, g in expected) / len(expected)
    assert result["metrics"]["lm_eval/model/ttt_cloze/acc"] == pytest.approx(accuracy)

    # A YAML task from --task-dir, whose accuracy is not trivially zero.
    task_dir = greedy_task(model, tokenizer, documents, tmp_path / "tasks")
    argv_local = [*argv, "--tasks", "greedy_cloze", "--task-dir", str(task_dir)]
    assert run_cli([*argv_local, "--out", str(tmp_path / "out2")]) == 0
    result = json.loads((tmp_path / "out2" / "lm_eval.json").read_text())
    expected = direct_scores(model, tokenizer, read_jsonl(task_dir / "greedy.jsonl"))
    accuracy = sum(g for _, g in expected) / len(expected)
    assert accuracy > 0
    assert result["metrics"]["lm_eval/model/greedy_cloze/acc"] == pytest.approx(accuracy)


def test_unknown_tasks_are_refused_before_the_model_runs(tmp_path, model_dir, shard_dir, capsys):
    argv = ["lm-eval", "--model", str(model_dir), "--data", str(shard_dir), "--tasks",
            "hellaswag", "--out", str(tmp_path / "out")]  # fmt: skip
    assert run_cli(argv) == 2
    assert "--tasks: ['hellaswag'] not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lm_eval.json").exists()
