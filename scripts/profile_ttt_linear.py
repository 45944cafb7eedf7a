"""Where the TTT-Linear dual op spends its time on CPU: torch.profiler's top ops by self time,
for the forward and for forward + backward, at one shape (default: issue 28's B1 H64 T256 d128
chunk 16, fp32). Prints both tables with the call's median time unprofiled and its mean time under the profiler
(whose per-op overhead inflates the small ops' self times), and writes them as JSON.

    python scripts/profile_ttt_linear.py --out docs/results/profile_ttt_linear.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from eval_stage.bench import BenchShape, dual_inputs
from stage_common.allocator import keep_freed_memory
from stage_common.config_cli import positive_int
from ttt_core.ops.backends import OPS_BACKENDS
from ttt_core.ops.ttt_linear.backends import ttt_linear_dual


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--heads", type=positive_int, default=64)
    parser.add_argument("--seq-len", type=positive_int, default=256)
    parser.add_argument("--head-dim", type=positive_int, default=128)
    parser.add_argument("--chunk", type=positive_int, default=16)
    parser.add_argument(
        "--backend", default="auto", choices=OPS_BACKENDS, help="ops backend of ttt_linear_dual"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="profiled calls per mode")
    parser.add_argument("--top", type=positive_int, default=15, help="rows per table")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args()


def top_ops(prof, count: int, repeats: int) -> list[dict]:
    """The `count` ops with the most self CPU time, per call of the op under test."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3 / repeats,
            "self_share": e.self_cpu_time_total / total,
            "calls": e.count // repeats,
        }
        for e in events[:count]
    ]


def median_ms(fn, repeats: int) -> float:
    """Median wall milliseconds of `repeats` calls of fn, outside any profiler."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    allocator = keep_freed_memory()  # as the trainer runs
    shape = BenchShape(batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                       chunk=args.chunk, seq_len=args.seq_len)  # fmt: skip
    inputs = dual_inputs(shape, torch.float32, torch.device("cpu"), seed=0)

    def forward(grad: bool):
        leaves = [t.detach().requires_grad_(grad) for t in inputs]
        z, W = ttt_linear_dual(*leaves, chunk_size=shape.chunk, backend=args.backend)
        if grad:
            (z.sum() + W.sum()).backward()

    tables, unprofiled_ms, profiled_ms = {}, {}, {}
    for mode, grad in (("fwd", False), ("fwd+bwd", True)):
        forward(grad)  # warm-up, outside the profile
        unprofiled_ms[mode] = median_ms(lambda grad=grad: forward(grad), args.repeats)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(args.repeats):
                forward(grad)
            profiled_ms[mode] = (time.perf_counter() - start) * 1e3 / args.repeats
        tables[mode] = top_ops(prof, args.top, args.repeats)
        print(
            f"\n{mode}: {unprofiled_ms[mode]:.2f} ms per call unprofiled (median), "
            f"{profiled_ms[mode]:.2f} ms under the profiler (mean); "
            f"top {args.top} ops by self CPU time, per call"
        )
        print(f"{'op':<40} {'self ms':>9} {'share':>7} {'calls':>6}")
        for row in tables[mode]:
            print(f"{row['op'][:40]:<40} {row['self_ms']:>9.2f} {row['self_share']:>7.1%} "
                  f"{row['calls']:>6}")  # fmt: skip
    record = {"shape": shape.model_dump(), "dtype": "float32", "backend": args.backend,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "torch": torch.__version__, "allocator": allocator, "repeats": args.repeats, "tables": tables,
              "unprofiled_ms": unprofiled_ms, "profiled_ms": profiled_ms}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
