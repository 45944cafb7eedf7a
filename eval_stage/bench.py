"""`bench-dual-primal`: the TTT-Linear ops on one shape — the dual chunk form (each requested
backend: autograd loop, fused manual backward, Triton) vs anchored primal (the token-by-token
reference) vs the online step, optionally vs flash-linear-attention's TTT-Linear, and the
floor they are measured against: the dual form's five chunk matmuls and nothing else
(`matmul_floor`, forward only), reported as `forward/<dual>_over_floor`.

Inputs are random and seeded: q, k, v (B, H, T, d) in the benchmark dtype, eta (B, H, T) fp32
at the scale of `eta_base` (0.01 x U[0, 1)), W (B, H, d, d) fp32, LN weight/bias (H, d) fp32,
as in the mixer under bf16 autocast. `forward` runs under no_grad; `forward_backward` runs the op
with every input requiring grad and back-propagates `sum(z * Cz) + sum(W_next * CW)` with fixed
random cotangents. Inputs are made before any timing. Every (op, mode) is run `warmup` times
untimed, then the competitors are timed interleaved — round r runs each once — `repeats` rounds
(median reported), so a machine that gets busier mid-run slows all of them alike; then each runs
once more to measure its peak memory (`eval_stage.memory`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import torch
from pydantic import BaseModel

from ttt_core.ops import (
    resolve_backend,
    ttt_linear_dual,
    ttt_linear_online,
    ttt_linear_primal_anchored,
)

from .config import BenchConfig
from .device import describe_device, resolve_device, time_interleaved
from .errors import EvalInputError, SpeedupBelowThreshold
from .fla_reference import SEMANTICS_NOTE, fla_ttt_linear, fla_unavailable
from .memory import peak_memory
from .results import EvalResult, metric_key, text_table

EVAL = "bench-dual-primal"
EPS = 1e-6


class BenchShape(BaseModel):
    batch: int
    heads: int
    head_dim: int
    chunk: int
    seq_len: int


PLAN_SHAPE = BenchShape(batch=16, heads=64, head_dim=128, chunk=16, seq_len=256)
CPU_SHAPE = BenchShape(batch=2, heads=8, head_dim=64, chunk=16, seq_len=256)


class BenchRow(BaseModel):
    op: str  # "dual" (the first backend), "dual_<backend>", "primal_anchored", "online", "fla_*"
    mode: str
    backend: str | None = None  # the dual-form implementation that ran ("fused" for "auto" on CPU)
    median_s: float
    tokens_per_s: float  # B * T / median_s
    peak_bytes: int
    times_s: list[float]


def resolve_shape(config: BenchConfig, device: torch.device) -> tuple[BenchShape, list[str]]:
    """The config's shape with unset fields from the plan's shape (CUDA) or the reduced CPU
    shape; also the names of the fields that took the reduced CPU default."""
    base = PLAN_SHAPE if device.type == "cuda" else CPU_SHAPE
    given = {
        f: getattr(config, f) for f in BenchShape.model_fields if getattr(config, f) is not None
    }
    reduced = [f for f in BenchShape.model_fields if f not in given] if base is CPU_SHAPE else []
    return base.model_copy(update=given), reduced


def dual_inputs(shape: BenchShape, dtype: torch.dtype, device: torch.device, seed: int):
    """Random q, k, v (B, H, T, d), eta (B, H, T), W (B, H, d, d), LN weight and bias (H, d)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, T, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen)

    q, k, v = (randn(B, H, T, d).to(device, dtype) for _ in range(3))
    eta = (0.01 * torch.rand(B, H, T, generator=gen)).to(device)
    W = (0.02 * randn(B, H, d, d)).to(device)
    ln_weight, ln_bias = (1 + 0.1 * randn(H, d)).to(device), (0.1 * randn(H, d)).to(device)
    return [q, k, v, eta, W, ln_weight, ln_bias]


Op = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def matmul_floor(q, k, v, eta, W, ln_weight, ln_bias, *, chunk_size: int):
    """The dual form's matmuls per chunk of b tokens (X = k, Q = q chunks, (b, d)) and nothing
    else: G = X W, A = Q Xᵀ, Z = Q W - A G, W <- W - Xᵀ G, the subtractions fused into
    `baddbmm` and the weight updated in place (a fresh weight per chunk made it 22% slower at
    B1 H64 T256 d128, so that floor was too easy to approach). v, eta and the LayerNorm are
    unused: their elementwise work is what a floor leaves out. Returns z (B, H, T, d) and W
    (B, H, d, d) in q's dtype; T a multiple of b. Timed in the forward mode only: autograd
    through this loop took longer than the fused dual form's whole forward+backward
    (docs/performance.md), so it bounds nothing there."""
    B, H, T, d = q.shape
    n, b = T // chunk_size, chunk_size
    Q, X = q.reshape(B * H, n, b, d), k.reshape(B * H, n, b, d)
    state = W.to(q.dtype, copy=True).reshape(B * H, d, d)  # every product in the benchmark dtype
    z = []
    for c in range(n):
        G = torch.bmm(X[:, c], state)
        A = torch.bmm(Q[:, c], X[:, c].transpose(1, 2))
        z.append(torch.bmm(Q[:, c], state).baddbmm_(A, G, alpha=-1))
        state.baddbmm_(X[:, c].transpose(1, 2), G, alpha=-1)
    return torch.stack(z, dim=1).reshape(B, H, T, d), state.reshape(B, H, d, d)


def competitors(
    config: BenchConfig, shape: BenchShape, device: torch.device
) -> dict[str, tuple[Op, str | None]]:
    """label -> (op of the 7 inputs returning (z, W_next), dual backend that runs or None).
    Raises EvalInputError, before any work, for a backend or FLA that cannot run here."""
    ops: dict[str, tuple[Op, str | None]] = {}
    if "dual" in config.ops:
        for i, name in enumerate(config.backends):
            try:
                chosen = resolve_backend(name, device, shape.head_dim, shape.chunk)
            except ValueError as e:
                raise EvalInputError(str(e)) from e
            op = partial(ttt_linear_dual, chunk_size=shape.chunk, eps=EPS, backend=chosen)
            ops["dual" if i == 0 else f"dual_{name}"] = (op, chosen)
    if "primal_anchored" in config.ops:
        ops["primal_anchored"] = (
            partial(ttt_linear_primal_anchored, chunk_size=shape.chunk, eps=EPS),
            None,
        )
    if "online" in config.ops:
        ops["online"] = (partial(ttt_linear_online, eps=EPS), None)
    if "floor" in config.ops:
        if shape.seq_len % shape.chunk:
            raise EvalInputError(
                f"the floor op times whole chunks: seq_len {shape.seq_len} is not a multiple "
                f"of chunk {shape.chunk}"
            )
        ops["floor"] = (partial(matmul_floor, chunk_size=shape.chunk), None)
    if config.compare_fla:
        if (reason := fla_unavailable()) is not None:
            raise EvalInputError(f"--compare-fla: {reason}")
        label, op = fla_ttt_linear(device, shape.chunk, EPS)
        ops[label] = (op, None)
    return ops


def _runner(op, mode: str, inputs: list[torch.Tensor], seed: int):
    """A no-argument callable running one forward (no_grad) or forward+backward."""
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return op(*inputs)

        return forward
    leaves = [x.detach().requires_grad_(True) for x in inputs]
    gen = torch.Generator().manual_seed(seed + 1)
    q, W = inputs[0], inputs[4]
    cz = torch.randn(q.shape, generator=gen).to(q.device)
    cw = torch.randn(W.shape, generator=gen).to(W.device)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        z, W_next = op(*leaves)
        ((z.float() * cz).sum() + (W_next * cw).sum()).backward()

    return forward_backward


def _speedups(rows: list[BenchRow]) -> dict[str, float]:
    """`<mode>/speedup_<dual>_over_<op>` = median time of op / median time of that dual row, for
    each dual row against every other op but the floor and every dual row listed after it;
    `forward/<dual>_over_floor` = the dual row's forward time in floors; and `<op>/fwd_bwd_over_fwd`,
    the cost of forward+backward in forwards, where both were timed."""
    times = {(r.op, r.mode): r.median_s for r in rows}
    labels = list(dict.fromkeys(r.op for r in rows))
    out = {}
    for i, dual in enumerate(labels):
        if not dual.startswith("dual"):
            continue
        others = [
            op
            for j, op in enumerate(labels)
            if op != "floor" and (not op.startswith("dual") or j > i)
        ]
        for mode in ("forward", "forward_backward"):
            for op in others:
                if (dual, mode) in times and (op, mode) in times:
                    out[f"{mode}/speedup_{dual}_over_{op}"] = (
                        times[(op, mode)] / times[(dual, mode)]
                    )
        if (dual, "forward") in times and ("floor", "forward") in times:
            out[f"forward/{dual}_over_floor"] = (
                times[(dual, "forward")] / times[("floor", "forward")]
            )
    for op in labels:
        if (op, "forward") in times and (op, "forward_backward") in times:
            out[f"{op}/fwd_bwd_over_fwd"] = times[(op, "forward_backward")] / times[(op, "forward")]
    return out


def evaluate_bench_dual_primal(config: BenchConfig) -> EvalResult:
    """Time and measure every (op, mode) of `config`; see the module docstring."""
    device = resolve_device(config.device)
    if config.dtype == "bf16" and device.type != "cuda":
        raise EvalInputError(
            "bf16 runs on CUDA only (CPU bf16 matmuls say nothing about the "
            "GPU kernels); use --dtype fp32 on CPU"
        )
    shape, reduced = resolve_shape(config, device)
    ops = competitors(config, shape, device)
    dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32
    inputs = dual_inputs(shape, dtype, device, config.seed)
    runners = {
        (label, mode): _runner(op, mode, inputs, config.seed)
        for mode in config.modes
        for label, (op, _) in ops.items()
        if label != "floor" or mode == "forward"  # autograd through it is no backward floor
    }
    times = time_interleaved(runners, device, repeats=config.repeats, warmup=config.warmup)
    rows, memory_methods = [], set()
    for (label, mode), run in runners.items():
        memory = peak_memory(run, device)
        memory_methods.add(memory.method)
        median_s = statistics.median(times[(label, mode)])
        rows.append(
            BenchRow(
                op=label,
                mode=mode,
                backend=ops[label][1],
                median_s=median_s,
                tokens_per_s=shape.batch * shape.seq_len / median_s,
                peak_bytes=memory.bytes,
                times_s=times[(label, mode)],
            )
        )
    notes = [f"peak memory: {' / '.join(sorted(memory_methods))}"]
    if config.compare_fla:
        notes.append(SEMANTICS_NOTE)
    return _result(config, device, shape, reduced, rows, notes)


def _result(
    config: BenchConfig,
    device: torch.device,
    shape: BenchShape,
    reduced: list[str],
    rows: list[BenchRow],
    notes: list[str],
) -> EvalResult:
    metrics = {}
    for r in rows:
        metrics[metric_key(EVAL, r.mode, r.op, "median_s")] = r.median_s
        metrics[metric_key(EVAL, r.mode, r.op, "tokens_per_s")] = r.tokens_per_s
        metrics[metric_key(EVAL, r.mode, r.op, "peak_mib")] = r.peak_bytes / 2**20
    speedups = _speedups(rows)
    metrics.update({metric_key(EVAL, k): v for k, v in speedups.items()})
    if reduced:
        notes.append(
            f"no CUDA device: CPU run at a reduced default shape ({', '.join(reduced)} not given; "
            f"plan shape B={PLAN_SHAPE.batch} H={PLAN_SHAPE.heads} d={PLAN_SHAPE.head_dim} "
            f"b={PLAN_SHAPE.chunk})"
        )
    tables = {"timings": [r.model_dump() for r in rows]}
    if config.assert_speedup is not None:
        measured = speedups["forward/speedup_dual_over_primal_anchored"]
        passed = measured >= config.assert_speedup
        tables["assert_speedup"] = [
            {"threshold": config.assert_speedup, "measured": measured, "passed": passed}
        ]
    return EvalResult(
        eval=EVAL,
        device=describe_device(device),
        config={
            **config.model_dump(mode="json"),
            "shape": shape.model_dump(),
            "reduced_cpu_default": bool(reduced),
        },
        metrics=metrics,
        tables=tables,
        notes=notes,
    )


def check_speedup(result: EvalResult) -> None:
    """Raise `SpeedupBelowThreshold` when the result's `assert_speedup` check failed."""
    for check in result.tables.get("assert_speedup", []):
        if not check["passed"]:
            raise SpeedupBelowThreshold(
                f"forward dual/primal speedup {check['measured']:.2f}x is below "
                f"--assert-speedup {check['threshold']:g}"
            )


def summarize(result: EvalResult) -> str:
    rows = [BenchRow.model_validate(r) for r in result.tables["timings"]]
    table = [
        {
            "op": r.op,
            "backend": r.backend or "",
            "mode": r.mode,
            "median ms": 1e3 * r.median_s,
            "tokens/s": r.tokens_per_s,
            "peak MiB": r.peak_bytes / 2**20,
        }
        for r in rows
    ]
    shape = result.config["shape"]
    lines = [
        f"shape B={shape['batch']} H={shape['heads']} d={shape['head_dim']} "
        f"b={shape['chunk']} T={shape['seq_len']}, {result.config['dtype']}",
        text_table(table, ["op", "backend", "mode", "median ms", "tokens/s", "peak MiB"]),
    ]
    lines += [
        f"{k}: {v:.2f}x"
        for k, v in result.metrics.items()
        if "speedup" in k or "fwd_bwd" in k or "over_floor" in k
    ]
    return "\n".join(lines + result.notes)
