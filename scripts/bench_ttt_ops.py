"""Quick timing of the TTT-Linear ops on one shape: dual vs anchored primal (vs online).

    python scripts/bench_ttt_ops.py --batch 2 --heads 8 --head-dim 64 --seq-len 1024 --chunk 16

Prints median wall time and tokens/s per op (forward only) and writes JSON with --out.
The full benchmark (forward+backward, memory, bf16) is `python -m eval_stage bench-dual-primal`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ttt_core.ops import ttt_linear_dual, ttt_linear_online, ttt_linear_primal_anchored


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    B, H, T, d = args.batch, args.heads, args.seq_len, args.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, d, generator=gen) for _ in range(3))
    eta = 0.01 * torch.rand(B, H, T, generator=gen)
    W = 0.02 * torch.randn(B, H, d, d, generator=gen)
    ln_w, ln_b = torch.ones(H, d), torch.zeros(H, d)
    ops = {
        "dual": lambda: ttt_linear_dual(q, k, v, eta, W, ln_w, ln_b, chunk_size=args.chunk),
        "primal_anchored": lambda: ttt_linear_primal_anchored(
            q, k, v, eta, W, ln_w, ln_b, chunk_size=args.chunk
        ),
        "online": lambda: ttt_linear_online(q, k, v, eta, W, ln_w, ln_b),
    }
    results = {"shape": vars(args), "threads": torch.get_num_threads(), "ops": {}}
    with torch.no_grad():
        for name, fn in ops.items():
            seconds = median_seconds(fn, args.repeats)
            results["ops"][name] = {"median_s": seconds, "tokens_per_s": B * T / seconds}
            print(f"{name:>16}: {seconds * 1e3:9.1f} ms  {B * T / seconds:12,.0f} tokens/s")
    speedup = results["ops"]["primal_anchored"]["median_s"] / results["ops"]["dual"]["median_s"]
    results["dual_over_primal_speedup"] = speedup
    print(f"dual is {speedup:.2f}x faster than the anchored primal")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
