"""`EVALS` lists every eval once; everything else that names evals agrees with it."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from eval_stage import EVALS, STANDARD_EVALS, EvalOutputs, find_eval, result_file
from eval_stage.compare import EVAL as COMPARE
from eval_stage.plots import PLOTTERS
from eval_stage.results import EvalName


def test_every_eval_is_listed_once_and_its_two_spellings_agree():
    commands = {spec.command for spec in EVALS.values()}
    # every result kind is an eval, except `compare`: a report over other runs' results
    assert commands | {COMPARE} == set(get_args(EvalName)) and COMPARE not in commands
    assert set(PLOTTERS) <= commands | {COMPARE}
    for name, spec in EVALS.items():
        assert spec.name == name == spec.command.replace("-", "_")
        assert find_eval(spec.command) is spec is find_eval(name)
        assert callable(spec.evaluate) and callable(spec.module.summarize)
    assert EVALS["position_loss"].command == "position-loss"
    assert STANDARD_EVALS == ("perplexity", "position_loss", "niah", "latency")


def test_an_unknown_eval_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown eval 'ppl'; choose one of"):
        find_eval("ppl")


def test_eval_outputs_are_the_result_files_publish_writes(tmp_path):
    out = EvalOutputs(tmp_path, ["position-loss", "niah"])
    assert out.files == [tmp_path / "position_loss.json", tmp_path / "niah.json"]
    assert not out.complete()
    for path in out.files:
        path.write_text(json.dumps({}))
    assert out.complete() and result_file(tmp_path, "niah") == tmp_path / "niah.json"
