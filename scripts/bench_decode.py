"""Per-token decode latency against context length, TTT-Linear vs the attention baseline.

    python scripts/bench_decode.py --preset small_cpu --contexts 256 4096 --tokens 32

For each mixer and context: prefill a random context of that length, then time `--tokens`
single-token `model.decode` calls; report the median per-token latency and the cache size.
A TTT model's decode cost should not depend on the context; attention's grows with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ttt_core import TTTLM, ModelConfig


@torch.no_grad()
def decode_latency(model: TTTLM, context: int, tokens: int, decode_mode: str) -> dict:
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(context)
    cache = model.new_cache(1, decode_mode=decode_mode)
    cache = model(torch.randint(0, vocab, (1, context), generator=gen), cache=cache).cache
    next_ids = torch.randint(0, vocab, (tokens + 2, 1, 1), generator=gen)
    for warm in next_ids[:2]:
        cache = model.decode(warm, cache).cache
    times = []
    for token in next_ids[2:]:
        start = time.perf_counter()
        cache = model.decode(token, cache).cache
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "cache_bytes": cache.nbytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small_cpu")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--decode-mode", choices=["online", "chunked"], default="online")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    results = {
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "mixers": {},
    }
    for mixer in ("ttt_linear", "attention"):
        torch.manual_seed(0)
        model = TTTLM(ModelConfig.from_preset(args.preset, mixer=mixer)).eval()
        rows = {c: decode_latency(model, c, args.tokens, args.decode_mode) for c in args.contexts}
        first, last = rows[args.contexts[0]], rows[args.contexts[-1]]
        ratio = last["median_ms"] / first["median_ms"]
        results["mixers"][mixer] = {"by_context": rows, "latency_ratio": ratio}
        for c, row in rows.items():
            print(
                f"{mixer:>10} context {c:>6}: {row['median_ms']:7.2f} ms/token  "
                f"cache {row['cache_bytes'] / 2**20:7.2f} MiB"
            )
        print(f"{mixer:>10} latency ratio {args.contexts[-1]}/{args.contexts[0]}: {ratio:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
