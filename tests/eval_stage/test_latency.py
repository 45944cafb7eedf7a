"""latency: prefill/decode timings of a TTT model and its attention baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval_stage import EvalInputError, LatencyConfig, evaluate_latency, preset_models, publish

from .helpers import run_cli as main

CONFIG = LatencyConfig(contexts=[16, 64], decode_tokens=3, warmup=1, repeats=1)


def test_preset_pair_is_ttt_and_attention_of_the_same_shape() -> None:
    ttt, attention = preset_models("debug_tiny", seed=3)
    assert (ttt.config.mixer, attention.config.mixer) == ("ttt_linear", "attention")
    assert ttt.config.model_copy(update={"mixer": "attention"}) == attention.config
    assert not ttt.model.training and ttt.info["source"] == "preset:debug_tiny"


def test_rows_for_each_model_and_context_with_plot(tmp_path: Path) -> None:
    ttt, attention = preset_models("debug_tiny")
    result = evaluate_latency(ttt, CONFIG, attention)
    rows = result.tables["latency"]
    assert [(r["role"], r["context"]) for r in rows] == [
        ("model", 16), ("model", 64), ("baseline", 16), ("baseline", 64)
    ]  # fmt: skip
    for r in rows:
        assert (
            r["prefill_s"] > 0 and r["decode_ms"] > 0 and math.isfinite(r["prefill_tokens_per_s"])
        )
        assert r["decode_ms_mean"] > 0
    ttt = {r["context"]: r["cache_bytes"] for r in rows if r["role"] == "model"}
    kv = {r["context"]: r["cache_bytes"] for r in rows if r["role"] == "baseline"}
    assert ttt[16] == ttt[64]  # the fast weights do not grow with the context
    assert kv[64] > kv[16]  # the KV cache does
    assert result.device.type == "cpu" and result.device.threads >= 1
    files = publish(result, tmp_path)
    assert [f.name for f in files] == ["latency.json", "latency.png"]


def test_cli_with_preset_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["latency", "--preset", "debug_tiny", "--contexts", "16", "32", "--decode-tokens", "2",
            "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["eval"] == "latency" and saved["plots"] == ["latency.png"]
    assert [m["source"] for m in saved["models"]] == ["preset:debug_tiny"] * 2
    assert "decode ms" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["latency", "--contexts", "16"],
     ["latency", "--preset", "debug_tiny", "--baseline", "x", "--out", "o"],
     ["latency", "--preset", "debug_tiny"],
     ["latency", "--preset", "no_such_preset", "--out", "o"],
     ["latency", "--preset", "debug_tiny", "--contexts", "64", "16", "--out", "o"]],
)  # fmt: skip
def test_cli_refuses_bad_model_choices(
    argv: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval_stage latency" in err
    assert not (tmp_path / "o").exists()


def test_preset_models_refuse_unknown_preset() -> None:
    with pytest.raises(EvalInputError, match="unknown model preset"):
        preset_models("nope")
