"""bench-dual-primal: timings, speedups and memory per op and mode; the speedup gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval_stage import BenchConfig, SpeedupBelowThreshold, check_speedup, evaluate_bench_dual_primal
from eval_stage.bench import CPU_SHAPE, matmul_floor, resolve_shape
from eval_stage.errors import EvalInputError
from eval_stage.memory import peak_memory
from tests.ttt_core.helpers import random_op_inputs

from .helpers import run_cli as main

TINY = dict(device="cpu", batch=1, heads=2, head_dim=8, chunk=4, seq_len=16, repeats=2)
TINY_FLAGS = ["--device", "cpu", "--batch", "1", "--heads", "2", "--head-dim", "8", "--chunk", "4",
              "--seq-len", "16", "--repeats", "1"]  # fmt: skip


def test_every_op_and_mode_is_timed_and_measured() -> None:
    result = evaluate_bench_dual_primal(BenchConfig(**TINY))
    rows = result.tables["timings"]
    assert {(r["op"], r["mode"]) for r in rows} == {
        (op, mode)
        for op in ("dual", "primal_anchored", "online")
        for mode in ("forward", "forward_backward")
    } | {("floor", "forward")}
    for r in rows:
        assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["peak_bytes"] >= 0
        assert r["tokens_per_s"] == pytest.approx(16 / r["median_s"])
    fwd = {r["op"]: r["median_s"] for r in rows if r["mode"] == "forward"}
    key = "bench_dual_primal/forward/speedup_dual_over_primal_anchored"
    assert result.metrics[key] == pytest.approx(fwd["primal_anchored"] / fwd["dual"])
    assert "bench_dual_primal/forward_backward/speedup_dual_over_online" in result.metrics
    assert result.metrics["bench_dual_primal/forward/dual_over_floor"] == pytest.approx(
        fwd["dual"] / fwd["floor"]
    )
    assert not [k for k in result.metrics if "speedup_dual_over_floor" in k]
    assert result.config["shape"] == {
        "batch": 1,
        "heads": 2,
        "head_dim": 8,
        "chunk": 4,
        "seq_len": 16,
    }
    assert result.config["reduced_cpu_default"] is False and not result.models


def test_the_floor_is_the_dual_forms_chunk_matmuls_fp64() -> None:
    B, H, T, d, b = 2, 3, 12, 5, 4
    q, k, v, eta, W, ln_w, ln_b = random_op_inputs(B, H, T, d, dtype=torch.float64, seed=3)
    W = W.double()
    z, W_next = matmul_floor(q, k, v, eta, W, ln_w, ln_b, chunk_size=b)
    state, chunks = W.clone(), []
    for c in range(T // b):  # one (batch, head) matrix product at a time, by matmul
        X, Q = k[:, :, c * b : (c + 1) * b], q[:, :, c * b : (c + 1) * b]
        G = X @ state
        chunks.append(Q @ state - (Q @ X.transpose(-1, -2)) @ G)
        state = state - X.transpose(-1, -2) @ G
    torch.testing.assert_close(z, torch.cat(chunks, dim=2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W_next, state, rtol=1e-12, atol=1e-12)


def test_the_floor_refuses_a_partial_chunk() -> None:
    with pytest.raises(EvalInputError, match="seq_len 18 is not a multiple of chunk 4"):
        evaluate_bench_dual_primal(BenchConfig(**{**TINY, "seq_len": 18}))
    with pytest.raises(ValueError, match="floor op is timed in the forward mode only"):
        BenchConfig(**TINY, ops=["dual", "floor"], modes=["forward_backward"])
    only_backward = evaluate_bench_dual_primal(BenchConfig(**TINY, modes=["forward_backward"]))
    assert "floor" not in {r["op"] for r in only_backward.tables["timings"]}


def test_cpu_without_a_shape_takes_the_reduced_default_and_says_so() -> None:
    shape, reduced = resolve_shape(BenchConfig(device="cpu", seq_len=64), torch.device("cpu"))
    assert shape == CPU_SHAPE.model_copy(update={"seq_len": 64})
    assert reduced == ["batch", "heads", "head_dim", "chunk"]


def test_peak_memory_sees_a_large_temporary_allocation() -> None:
    def allocate() -> None:
        x = torch.ones(16 * 2**20 // 4)  # 16 MiB
        x.add_(1)

    for _ in range(2):  # also after the allocator has seen (and kept) such a block
        assert peak_memory(allocate, torch.device("cpu")).bytes >= 15 * 2**20


def test_an_impossible_speedup_threshold_fails_after_writing(tmp_path: Path, capsys) -> None:
    argv = ["bench-dual-primal", *TINY_FLAGS, "--modes", "forward", "--assert-speedup", "1e9",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 1
    assert "below --assert-speedup 1e+09" in capsys.readouterr().err
    saved = json.loads((tmp_path / "bench_dual_primal.json").read_text())
    assert saved["tables"]["assert_speedup"][0]["passed"] is False


def test_a_reachable_threshold_passes() -> None:
    result = evaluate_bench_dual_primal(BenchConfig(**TINY, modes=["forward"], assert_speedup=1e-6))
    check_speedup(result)
    failing = result.model_copy(
        update={
            "tables": {
                **result.tables,
                "assert_speedup": [{"threshold": 2.0, "measured": 1.0, "passed": False}],
            }
        }
    )
    with pytest.raises(SpeedupBelowThreshold):
        check_speedup(failing)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--dtype", "bf16", "--device", "cpu"], "bf16 runs on CUDA only"),
     (["--ops", "dual", "online", "--assert-speedup", "2"], "assert_speedup compares"),
     (["--batch", "0"], "batch"),
     (["--ops", "online", "--backend", "fused"], "keep `dual` in ops"),
     (["--backend", "triton", "--head-dim", "12"], "ops backend 'triton' cannot run here"),
     (["--device", "tpu"], "invalid choice")],
)  # fmt: skip
def test_cli_refusals_exit_2_and_write_nothing(flags, message, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["bench-dual-primal", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_several_backends_are_timed_side_by_side_with_their_speedups() -> None:
    config = BenchConfig(**TINY, backends=["fused", "autograd"], ops=["dual", "primal_anchored"])
    result = evaluate_bench_dual_primal(config)
    rows = {(r["op"], r["mode"]): r for r in result.tables["timings"]}
    assert set(rows) == {
        (op, mode)
        for op in ("dual", "dual_autograd", "primal_anchored")
        for mode in ("forward", "forward_backward")
    }
    assert rows[("dual", "forward")]["backend"] == "fused"
    assert rows[("dual_autograd", "forward")]["backend"] == "autograd"
    assert rows[("primal_anchored", "forward")]["backend"] is None
    fb = {op: rows[(op, "forward_backward")]["median_s"] for op in ("dual", "dual_autograd")}
    key = "bench_dual_primal/forward_backward/speedup_dual_over_dual_autograd"
    assert result.metrics[key] == pytest.approx(fb["dual_autograd"] / fb["dual"])
    ratio = "bench_dual_primal/dual/fwd_bwd_over_fwd"
    assert result.metrics[ratio] == pytest.approx(
        fb["dual"] / rows[("dual", "forward")]["median_s"]
    )
    # every competitor ran every round: timings are interleaved, not one op after another
    assert all(len(r["times_s"]) == TINY["repeats"] for r in rows.values())


def test_compare_fla_without_the_package_is_refused_before_any_work(monkeypatch) -> None:
    monkeypatch.setattr(
        "eval_stage.bench.fla_unavailable", lambda: "flash-linear-attention is not importable"
    )
    with pytest.raises(EvalInputError, match="--compare-fla: flash-linear-attention"):
        evaluate_bench_dual_primal(BenchConfig(**TINY, compare_fla=True))


def test_compare_fla_times_its_reference_at_the_same_shape() -> None:
    pytest.importorskip("fla.ops.ttt", reason="flash-linear-attention is not installed ([fla])")
    config = BenchConfig(**{**TINY, "chunk": 8}, ops=["dual"], compare_fla=True)
    result = evaluate_bench_dual_primal(config)
    ops = {r["op"] for r in result.tables["timings"]}
    assert ops == {"dual", "fla_naive"}
    assert "bench_dual_primal/forward/speedup_dual_over_fla_naive" in result.metrics
    assert any("FLA TTT-Linear differs" in note for note in result.notes)


def test_fla_reference_runs_our_inputs_in_its_layout() -> None:
    """The adapter feeds FLA (B, T, H, d) tensors and W^T: with eta = 0 nothing is learned, so
    its final state is W itself and its output is FLA's `u + LN(u)` with u = W q."""
    pytest.importorskip("fla.ops.ttt", reason="flash-linear-attention is not installed ([fla])")
    from eval_stage.fla_reference import fla_ttt_linear

    q, k, v, _, W, lw, lb = (x.float() for x in random_op_inputs(1, 2, 16, 16, seed=1))
    _, op = fla_ttt_linear(torch.device("cpu"), 8, 1e-6)
    z, W_next = op(q, k, v, torch.zeros(1, 2, 16), W, lw, lb)
    u = q @ W.transpose(-1, -2)
    ln_u = (u - u.mean(-1, keepdim=True)) / torch.sqrt(
        u.var(-1, unbiased=False, keepdim=True) + 1e-6
    )
    torch.testing.assert_close(W_next, W)
    torch.testing.assert_close(z, u + ln_u * lw[:, None] + lb[:, None], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU refusal")
def test_bf16_on_auto_device_without_gpu_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["bench-dual-primal", "--dtype", "bf16", "--out", str(tmp_path / "o")]) == 2
    assert "use --dtype fp32 on CPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_bf16_on_cuda_measures_the_cuda_allocator(tmp_path: Path) -> None:
    result = evaluate_bench_dual_primal(BenchConfig(**{**TINY, "device": "cuda"}, dtype="bf16"))
    assert result.device.type == "cuda" and result.config["reduced_cpu_default"] is False
    assert all(r["peak_bytes"] > 0 for r in result.tables["timings"])
    assert "cuda max_memory_allocated" in result.notes[0]
