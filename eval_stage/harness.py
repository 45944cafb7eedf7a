"""`lm-eval`: lm-evaluation-harness on the model through transformers (`ttt_core.hf`), offline.

Only local tasks run (no network: the datasets library and the hub are set offline):
- `ttt_cloze`, built in: next-word cloze written from the val split of `--data`. For each of
  `docs` val rows (seeded choice), the row's ids without BOS/EOS/PAD are decoded and split into
  words; at a seeded cut the context is the words before it and the target is " " + the word.
  Metric: `acc` (lm-eval's is-greedy: every target token is the model's argmax); each
  document's target log-likelihood is in the `samples` table.
- lm-eval task YAML files in `--task-dir` (their data must be local files).
Text is encoded with the shards' tokenizer (`ttt_core.hf.load_tokenizer`), which every model
must share (`check_fits`). Needs the optional extras `[hf]` and `[lm-eval]`.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from data_stage import ShardDataset, Tokenizer, load_tokenizer

from .config import LmEvalConfig
from .data import check_fits, open_val
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "lm-eval"
CLOZE_TASK = "ttt_cloze"
CLOZE_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


class ScoreRow(BaseModel):
    role: Role
    task: str
    metric: str
    value: float
    stderr: float | None


class SampleRow(BaseModel):
    """One scored `ttt_cloze` document."""

    role: Role
    doc_id: int
    target: str
    loglikelihood: float
    is_greedy: bool


def cloze_docs(ds: ShardDataset, tokenizer: Tokenizer, docs: int, seed: int) -> list[dict]:
    """Up to `docs` {"context", "target"} documents from distinct val rows (rows with fewer than
    two words are skipped). Same seed, same documents."""
    rng = random.Random(f"lm-eval:{seed}")
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    out = []
    for row in rng.sample(range(len(ds)), len(ds)):
        ids = [int(t) for t in ds[row] if int(t) not in special]
        words = tokenizer.decode(ids).split()
        if len(words) < 2:
            continue
        cut = rng.randrange(1, len(words))
        out.append({"context": " ".join(words[:cut]), "target": " " + words[cut]})
        if len(out) == docs:
            break
    if not out:
        raise EvalInputError(f"{ds.directory}: no val row has two words to build {CLOZE_TASK}")
    return out


def write_cloze_task(documents: list[dict], directory: Path) -> Path:
    """`directory/ttt_cloze.jsonl` and the task's YAML beside it; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{CLOZE_TASK}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in documents))
    yaml_text = CLOZE_YAML.format(task=CLOZE_TASK, docs=json.dumps(str(data)))
    (directory / f"{CLOZE_TASK}.yaml").write_text(yaml_text)
    return directory


def _task_manager(include_paths: list[Path], tasks: list[str]):
    """lm-eval's task index over `include_paths` only (its own tasks need the network);
    an unknown task is refused before any model runs."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False)
    missing = sorted(set(tasks) - set(manager.all_tasks))
    if missing:
        raise EvalInputError(
            f"--tasks: {missing} not found; local tasks are {CLOZE_TASK} and the YAML tasks in "
            f"--task-dir ({sorted(set(manager.all_tasks) - {CLOZE_TASK}) or 'none given'})"
        )
    return manager


def run_harness(
    loaded: LoadedModel, tokenizer_dir: Path, manager, config: LmEvalConfig
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on `loaded` wrapped as a transformers model; its raw output."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from ttt_core.hf import TTTLinearForCausalLM
    from ttt_core.hf import load_tokenizer as hf_tokenizer

    model = TTTLinearForCausalLM.from_ttt(loaded.model)
    device = model_device(loaded.model)
    lm = HFLM(
        pretrained=model,
        tokenizer=hf_tokenizer(tokenizer_dir),
        backend="causal",
        batch_size=config.batch_size,
        device=str(device),
    )
    return simple_evaluate(
        model=lm,
        tasks=list(config.tasks),
        task_manager=manager,
        limit=config.limit,
        log_samples=True,
        random_seed=config.seed,
        numpy_random_seed=config.seed,
        torch_random_seed=config.seed,
        fewshot_random_seed=config.seed,
    )


def _scores(output: dict[str, Any], role: Role) -> list[ScoreRow]:
    """lm-eval's `results` ({task: {"metric,filter": value, "metric_stderr,filter": ...}}) as
    rows; the filter is kept in the name when it is not lm-eval's default `none`."""
    rows = []
    for task, values in output["results"].items():
        for key, value in values.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                ScoreRow(
                    role=role,
                    task=task,
                    metric=metric if filter_name == "none" else f"{metric}_{filter_name}",
                    value=float(value),
                    stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                )
            )
    return rows


def _cloze_samples(output: dict[str, Any], role: Role) -> list[SampleRow]:
    rows = []
    for sample in output.get("samples", {}).get(CLOZE_TASK, []):
        loglikelihood, is_greedy = sample["filtered_resps"][0]
        rows.append(
            SampleRow(
                role=role,
                doc_id=sample["doc_id"],
                target=sample["doc"]["target"],
                loglikelihood=float(loglikelihood),
                is_greedy=bool(is_greedy),
            )
        )
    return rows


def evaluate_lm_eval(
    model: LoadedModel, config: LmEvalConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """lm-eval scores of `model` (and `baseline`) on `config.tasks`; the built-in task's files
    go to `config.task_files` (kept for inspection) or a temporary folder."""
    # Local task files only: never reach the hub. Set before `datasets` is imported (by
    # lm_eval), which reads them once.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import lm_eval  # noqa: F401

        import ttt_core.hf  # noqa: F401
    except ImportError as e:
        raise EvalInputError(
            f"lm-eval needs the optional extras: pip install 'ttt-bringup[hf,lm-eval]' ({e})"
        ) from e
    ds = open_val(config.data)
    pairs = roles(model, baseline)
    for _, loaded in pairs:
        check_fits(ds, loaded)
    tokenizer_dir = ds.directory / ds.manifest.tokenizer.dir
    with tempfile.TemporaryDirectory(prefix="lm_eval_tasks_") as scratch:
        include = [config.task_dir] if config.task_dir else []
        if CLOZE_TASK in config.tasks:
            documents = cloze_docs(ds, load_tokenizer(tokenizer_dir), config.docs, config.seed)
            include.append(write_cloze_task(documents, config.task_files or Path(scratch)))
        manager = _task_manager(include, list(config.tasks))
        scores, samples, metrics = [], [], {}
        for role, loaded in pairs:
            output = run_harness(loaded, tokenizer_dir, manager, config)
            for row in _scores(output, role):
                scores.append(row.model_dump())
                metrics[metric_key(EVAL, role, row.task, row.metric)] = row.value
            samples += [r.model_dump() for r in _cloze_samples(output, role)]
    return EvalResult(
        eval=EVAL,
        device=describe_device(model_device(model.model)),
        models=[model_info(m, r) for r, m in pairs],
        config=config.model_dump(mode="json"),
        metrics=metrics,
        tables={"scores": scores, "samples": samples},
        notes=[
            "lm-evaluation-harness through transformers (ttt_core.hf.TTTLinearForCausalLM), "
            "offline, local tasks only; text encoded with the shards' tokenizer",
            f"{CLOZE_TASK}: next-word cloze from val rows; acc = every target token is the "
            "argmax (lm-eval's is_greedy)",
        ],
    )


def summarize(result: EvalResult) -> str:
    """One row per (role, task, metric)."""
    rows = [ScoreRow.model_validate(r).model_dump() for r in result.tables["scores"]]
    for row in rows:
        if row["stderr"] is None or math.isnan(row["stderr"]):
            row["stderr"] = ""
    return text_table(rows, ["role", "task", "metric", "value", "stderr"])
