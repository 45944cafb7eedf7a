"""Training cost of each mixer against context length: tokens/s and peak memory of one fwd+bwd.

    python scripts/bench_mixers.py --out bench_results/bench_mixers.json

One model size for every mixer (`--d-model`, `--layers`, ...; a LaCT layer with `--lact-heads`
fast-weight heads, chunk and window `--chunk`), batch 1, T in `--seq-lens`. Per T, every mixer's
model and inputs are built before any timing, then the mixers are timed interleaved (round r runs
each once; median of `--repeats` rounds after one warmup), so load that changes mid-run reaches
all of them alike. Peak memory: each (mixer, T) in a fresh process (this script with `--one`), one
warmup fwd+bwd, then `eval_stage.memory.peak_memory` of one more (CPU: the RSS high-water mark
above the RSS before the call; CUDA: `max_memory_allocated` above the bytes allocated before).
`--op-memory` also measures the LaCT op alone (q, k, v, lr, gate of one layer, no model), where
the two backends differ and nothing else does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from eval_stage.device import describe_device, resolve_device, time_interleaved
from eval_stage.memory import peak_memory
from ttt_core import TTTLM, ModelConfig
from ttt_core.files import atomic_write_text

# name -> ModelConfig overrides (the LaCT ones get chunk, window and heads from the flags)
MIXERS: dict[str, dict] = {
    "ttt_linear": dict(mixer="ttt_linear", ops_backend="fused"),
    "lact-autograd": dict(mixer="lact", ops_backend="autograd"),
    "lact-fused": dict(mixer="lact", ops_backend="fused"),
    "swa": dict(mixer="swa"),
    "attention": dict(mixer="attention"),
}


def model_config(args: argparse.Namespace, mixer: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        mlp_hidden=args.mlp_hidden,
        lact_heads=args.lact_heads,
        lact_chunk_size=args.chunk,
        window_size=args.chunk,
        **MIXERS[mixer],
    )


def training_step(args: argparse.Namespace, mixer: str, T: int, device: torch.device):
    """A closure running one fwd+bwd of a fresh model on fixed random tokens (B = 1)."""
    torch.manual_seed(0)
    model = TTTLM(model_config(args, mixer)).to(device).train()
    ids = torch.randint(0, args.vocab, (1, T + 1), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()

    return step


def op_step(args: argparse.Namespace, backend: str, T: int, device: torch.device):
    """One fwd+bwd of the LaCT op alone, shaped as one layer of the model makes it."""
    from ttt_core.ops.lact import lact_scan

    gen = torch.Generator(device="cpu").manual_seed(0)
    Hf, d = args.lact_heads, args.d_model // args.lact_heads

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device).requires_grad_()

    q, k, v = (leaf(1, Hf, T, d) for _ in range(3))
    lr, gate = leaf(1, Hf, T, 3, scale=0.01), leaf(1, Hf, T)
    weights = tuple(leaf(1, Hf, d, d, scale=d**-0.5) for _ in range(3))
    norms = tuple(w.detach().norm(dim=-1, keepdim=True) for w in weights)

    def step() -> None:
        out = lact_scan(
            q, k, v, lr.abs(), gate.sigmoid(), weights, norms, chunk_size=args.chunk,
            muon=False, need_state=False, backend=backend,
        )  # fmt: skip
        out.o.sum().backward()

    return step


def measure_one(args: argparse.Namespace) -> dict:
    """This process's peak memory of one step (after a warmup step)."""
    device = resolve_device(args.device)
    kind, name, T = args.one
    T = int(T)
    step = op_step(args, name, T, device) if kind == "op" else training_step(args, name, T, device)
    step()
    peak = peak_memory(step, device)
    return {"bytes": peak.bytes, "method": peak.method}


def fresh_process_memory(args: argparse.Namespace, kind: str, name: str, T: int) -> dict:
    argv = [sys.executable, __file__, "--one", kind, name, str(T), *_shape_flags(args)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run {kind} {name} T={T} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shape_flags(args: argparse.Namespace) -> list[str]:
    names = ("vocab", "d_model", "layers", "heads", "mlp_hidden", "lact_heads", "chunk", "device")
    return [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-lens", default="1024,2048,4096,8192")
    p.add_argument("--mixers", default=",".join(MIXERS), help=f"subset of {list(MIXERS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp-hidden", type=int, default=1408)
    p.add_argument("--lact-heads", type=int, default=4)
    p.add_argument("--chunk", type=int, default=512, help="LaCT chunk = SWA/LaCT window")
    p.add_argument("--device", default="auto")
    p.add_argument("--op-memory", action="store_true", help="also the LaCT op alone")
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=3, metavar=("KIND", "NAME", "T"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.mixers.split(",")) - set(MIXERS)
    if unknown:
        p.error(f"--mixers: unknown {sorted(unknown)}; choose from {list(MIXERS)}")
    if args.one is None and args.out is None:
        p.error("--out is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args)))
        return 0
    device = resolve_device(args.device)
    mixers = args.mixers.split(",")
    rows = []
    for T in (int(t) for t in args.seq_lens.split(",")):
        steps = {m: training_step(args, m, T, device) for m in mixers}
        times = time_interleaved(steps, device, repeats=args.repeats, warmup=1)
        del steps
        for m in mixers:
            seconds = statistics.median(times[m])
            memory = fresh_process_memory(args, "model", m, T)
            row = {"mixer": m, "T": T, "seconds": seconds, "tokens_per_s": T / seconds,
                   "peak_bytes": memory["bytes"]}  # fmt: skip
            rows.append(row)
            print(f"T={T:>6} {m:>14}: {T / seconds:>8.0f} tok/s  {seconds:7.3f} s  "
                  f"peak {memory['bytes'] / 2**20:8.1f} MiB", flush=True)  # fmt: skip
        if args.op_memory:
            for backend in ("autograd", "fused"):
                memory = fresh_process_memory(args, "op", backend, T)
                rows.append({"mixer": f"lact-op-{backend}", "T": T, "peak_bytes": memory["bytes"]})
                print(f"T={T:>6} lact op {backend:>8}: peak {memory['bytes'] / 2**20:8.1f} MiB")
    result = {
        "command": " ".join(["python scripts/bench_mixers.py", *(argv or sys.argv[1:])]),
        "device": describe_device(device).model_dump(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "memory_method": memory["method"],
        "shape": {
            n: getattr(args, n)
            for n in ("vocab", "d_model", "layers", "heads", "mlp_hidden", "lact_heads", "chunk")
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
