"""The fused TTT-Linear op of another commit against this tree's, in one process, interleaved:
forward and forward + backward of both, and the matmul floor, on the same inputs.

    python scripts/compare_fused_commits.py --old 361f151 --out fused_ab.json

The other commit's `ttt_core/ops/ttt_linear/fused.py` is read with `git show` and imported
beside this tree's (its relative imports pointed at this tree's `common` and `dual`, so it must
still import against them). Round r runs each case once, after `--warmup` untimed rounds;
inputs and cotangents are made before any timing. Reported: the median milliseconds per case,
and per pair of interest the median of the per-round ratios with their 2.5-97.5 percentiles.
Like the trainer, it keeps freed memory (`stage_common.allocator`). Writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from eval_stage.bench import BenchShape, dual_inputs, matmul_floor
from stage_common.allocator import keep_freed_memory
from stage_common.config_cli import positive_int
from ttt_core.ops.ttt_linear import fused as new_fused

MODULE = "ttt_core/ops/ttt_linear/fused.py"
PAIRS = {  # name -> (numerator, denominator)
    "old_fwd_over_floor": ("old_fwd", "floor"),
    "new_fwd_over_floor": ("new_fwd", "floor"),
    "old_fwd_bwd_over_fwd": ("old_fwd_bwd", "old_fwd"),
    "new_fwd_bwd_over_fwd": ("new_fwd_bwd", "new_fwd"),
    "new_over_old_fwd": ("new_fwd", "old_fwd"),
    "new_over_old_fwd_bwd": ("new_fwd_bwd", "old_fwd_bwd"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the commit whose fused.py to compare")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--heads", type=positive_int, default=64)
    parser.add_argument("--seq-len", type=positive_int, default=256)
    parser.add_argument("--head-dim", type=positive_int, default=128)
    parser.add_argument("--chunk", type=positive_int, default=16)
    parser.add_argument("--rounds", type=positive_int, default=11, help="timed rounds")
    parser.add_argument("--warmup", type=positive_int, default=2, help="untimed rounds first")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args()


def load_old(rev: str, workdir: Path):
    """The fused module of commit `rev`, imported as `fused_<rev>`. Exits with one line when the
    commit or its file cannot be read."""
    repo = Path(__file__).resolve().parents[1]
    shown = subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:{MODULE}"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        sys.exit(f"error: cannot read {MODULE} at {rev!r}: {shown.stderr.strip()}")
    source = shown.stdout.replace("from .", "from ttt_core.ops.ttt_linear.")
    path = workdir / f"fused_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(old, shape: BenchShape) -> dict:
    """name -> zero-argument callable, every input made here (outside any timing)."""
    args = dual_inputs(shape, torch.float32, torch.device("cpu"), seed=0)
    leaves = [a.detach().clone().requires_grad_(i < 5) for i, a in enumerate(args)]
    gen = torch.Generator().manual_seed(1)
    dz = torch.randn(args[0].shape, generator=gen)
    dW = torch.randn(args[4].shape, generator=gen)
    b = shape.chunk

    def forward(module):
        with torch.no_grad():
            module.fused_dual_scan(*args, chunk_size=b)

    def forward_backward(module):
        z, W = module.fused_dual_scan(*leaves, chunk_size=b)[:2]
        torch.autograd.backward([z, W], [dz, dW])

    def floor():
        with torch.no_grad():
            matmul_floor(*args, chunk_size=b)

    return {
        "floor": floor,
        "old_fwd": lambda: forward(old),
        "new_fwd": lambda: forward(new_fused),
        "old_fwd_bwd": lambda: forward_backward(old),
        "new_fwd_bwd": lambda: forward_backward(new_fused),
    }


def main() -> None:
    args = parse_args()
    allocator = keep_freed_memory()  # as the trainer and `eval_stage bench-dual-primal` run
    shape = BenchShape(
        batch=args.batch, heads=args.heads, seq_len=args.seq_len, head_dim=args.head_dim,
        chunk=args.chunk,
    )  # fmt: skip
    if shape.seq_len % shape.chunk:
        sys.exit(f"error: --seq-len {shape.seq_len} must be a multiple of --chunk {shape.chunk}")
    with tempfile.TemporaryDirectory() as workdir:
        old = load_old(args.old, Path(workdir))
    timed = cases(old, shape)
    ms: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(args.warmup + args.rounds):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            if r >= args.warmup:
                ms[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(v) for name, v in ms.items()}
    ratios = {}
    for pair, (num, den) in PAIRS.items():
        per_round = sorted(a / b for a, b in zip(ms[num], ms[den], strict=True))
        q = statistics.quantiles(per_round, n=40, method="inclusive")
        ratios[pair] = {"median": statistics.median(per_round), "p2.5": q[0], "p97.5": q[-1]}
    print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; {allocator}")
    print(f"shape {shape}")
    for name, value in medians.items():
        print(f"{name:14s} {value:9.2f} ms")
    for pair, r in ratios.items():
        print(f"{pair:22s} {r['median']:.3f} [{r['p2.5']:.3f}, {r['p97.5']:.3f}]")
    result = {
        "old": args.old, "shape": shape.model_dump(),
        "rounds": args.rounds, "warmup": args.warmup, "median_ms": medians, "ratios": ratios,
        "ms": ms, "threads": torch.get_num_threads(), "torch": torch.__version__, "allocator": allocator,
        "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
