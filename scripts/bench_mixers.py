"""Cost of each mixer against context length: tokens/s and peak memory of one training fwd+bwd,
and (`--decode-contexts`) decode milliseconds per token after a context.

    python scripts/bench_mixers.py --out bench_results/bench_mixers.json
    python scripts/bench_mixers.py --mixers e2e,swa,attention --layers 4 \
        --decode-contexts 1024,2048,4096,8192 --out bench_results/bench_e2e.json

One model size for every mixer (`--d-model`, `--layers`, ...; a LaCT layer with `--lact-heads`
fast-weight heads; chunk and window `--chunk` for LaCT, SWA and TTT-E2E, whose top
`--e2e-suffix` blocks carry a prime MLP: it and the regular MLPs are `--mlp-hidden * L / (L +
N)` wide, so the parameter count matches the others'), batch 1, T in `--seq-lens`. Per T, every mixer's
model and inputs are built before any timing, then the mixers are timed interleaved (round r runs
each once; median of `--repeats` rounds after one warmup), so load that changes mid-run reaches
all of them alike. Peak memory: each (mixer, T) in a fresh process (this script with `--one`), one
warmup fwd+bwd, then `eval_stage.memory.peak_memory` of one more (CPU: the RSS high-water mark
above the RSS before the call; CUDA: `max_memory_allocated` above the bytes allocated before).
`--op-memory` also measures the LaCT op alone (q, k, v, lr, gate of one layer, no model), where
the two backends differ and nothing else does. Decode (`eval_stage.latency.measure_context`):
per context, every mixer prefills random ids into a fresh cache, then decodes `--decode-tokens`
tokens one at a time (default: one chunk, so a chunked mixer's step is among them); rounds
interleave the mixers, and the row keeps the median over rounds of each per-token median and
mean (the mean counts the chunk steps), and the state the cache holds right after the prefill
(attention: the keys and values of the context; the others: a fixed size), drawn in
`<out>.png`. `--seq-lens ""` skips the training rows.
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
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from eval_stage.config import LatencyConfig
from eval_stage.device import describe_device, resolve_device, time_interleaved
from eval_stage.figures import save_figure
from eval_stage.latency import measure_context
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
    "none": dict(mixer="none"),
    "e2e": dict(mixer="swa"),  # + the suffix and the MLP widths (model_config)
}


def model_config(args: argparse.Namespace, mixer: str) -> ModelConfig:
    mlp, e2e = args.mlp_hidden, {}
    if mixer == "e2e":  # L regular + N prime MLPs of one width, as many weights as L regular
        mlp = round(args.mlp_hidden * args.layers / (args.layers + args.e2e_suffix))
        e2e = dict(e2e_suffix_layers=args.e2e_suffix, e2e_chunk_size=args.chunk)
        e2e["e2e_prime_hidden"] = mlp
    return ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        mlp_hidden=mlp,
        lact_heads=args.lact_heads,
        lact_chunk_size=args.chunk,
        window_size=args.chunk,
        **MIXERS[mixer],
        **e2e,
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


def decode_rows(args: argparse.Namespace, mixers: list[str], device: torch.device) -> list[dict]:
    """Decode ms/token after each of `--decode-contexts` tokens, the mixers interleaved."""
    models = {}
    for m in mixers:
        torch.manual_seed(0)
        models[m] = TTTLM(model_config(args, m)).to(device).eval()
    config = LatencyConfig(
        contexts=[1], decode_tokens=args.decode_tokens or args.chunk, warmup=2, repeats=1
    )
    rows = []
    for i, context in enumerate(int(c) for c in args.decode_contexts.split(",")):
        runs = {m: [] for m in mixers}
        for _ in range(args.repeats):
            for m in mixers:
                runs[m].append(
                    measure_context(models[m], context, config, "model", warm_up_prefill=i == 0)
                )
        for m in mixers:
            row = {
                "mixer": m, "context": context, "decode_tokens": config.decode_tokens,
                "decode_ms": statistics.median(r.decode_ms for r in runs[m]),
                "decode_ms_mean": statistics.median(r.decode_ms_mean for r in runs[m]),
                "prefill_tokens_per_s": statistics.median(r.prefill_tokens_per_s for r in runs[m]),
                "state_bytes": runs[m][-1].state_bytes,
                "cache_bytes": runs[m][-1].cache_bytes,
            }  # fmt: skip
            rows.append(row)
            print(f"ctx={context:>6} {m:>14}: decode {row['decode_ms']:7.2f} ms/token median, "
                  f"{row['decode_ms_mean']:7.2f} mean  state {row['state_bytes'] / 2**20:8.2f} MiB",
                  flush=True)  # fmt: skip
    return rows


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
    names = (*SHAPE, "device")
    return [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]


SHAPE = ("vocab", "d_model", "layers", "heads", "mlp_hidden", "lact_heads", "chunk", "e2e_suffix")


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
    p.add_argument("--chunk", type=int, default=512, help="LaCT and E2E chunk = SWA window")
    p.add_argument("--e2e-suffix", type=int, default=1, help="TTT-E2E suffix blocks")
    p.add_argument("--decode-contexts", default="", help="e.g. 1024,4096 (default: no decode)")
    p.add_argument("--decode-tokens", type=int, default=0, help="default: --chunk")
    p.add_argument("--device", default="auto")
    p.add_argument("--op-memory", action="store_true", help="also the LaCT op alone")
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=3, metavar=("KIND", "NAME", "T"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.mixers.split(",")) - set(MIXERS)
    if unknown:
        p.error(f"--mixers: unknown {sorted(unknown)}; choose from {list(MIXERS)}")
    if "e2e" in args.mixers.split(",") and not 0 < args.e2e_suffix <= args.layers:
        p.error(f"--e2e-suffix must be in 1..--layers ({args.layers}), got {args.e2e_suffix}")
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
    rows, memory = [], {"method": None}
    for T in (int(t) for t in args.seq_lens.split(",") if t):
        steps = {m: training_step(args, m, T, device) for m in mixers}
        times = time_interleaved(steps, device, repeats=args.repeats, warmup=1)
        del steps
        for m in mixers:
            seconds = statistics.median(times[m])
            memory = fresh_process_memory(args, "model", m, T)
            row = {"mixer": m, "T": T, "seconds": seconds, "tokens_per_s": T / seconds,
                   "peak_bytes": memory["bytes"],
                   "params": model_config(args, m).num_params()}  # fmt: skip
            rows.append(row)
            print(f"T={T:>6} {m:>14}: {T / seconds:>8.0f} tok/s  {seconds:7.3f} s  "
                  f"peak {memory['bytes'] / 2**20:8.1f} MiB", flush=True)  # fmt: skip
        if args.op_memory:
            for backend in ("autograd", "fused"):
                memory = fresh_process_memory(args, "op", backend, T)
                rows.append({"mixer": f"lact-op-{backend}", "T": T, "peak_bytes": memory["bytes"]})
                print(f"T={T:>6} lact op {backend:>8}: peak {memory['bytes'] / 2**20:8.1f} MiB")
    decode = decode_rows(args, mixers, device) if args.decode_contexts else []
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
        "shape": {n: getattr(args, n) for n in SHAPE},
        "rows": rows,
        "decode": decode,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if decode:
        figure = args.out.with_suffix(".png")
        save_figure(decode_figure(decode, describe_device(device).name), figure)
        print(f"wrote {figure}")
    return 0


def decode_figure(rows: list[dict], device: str) -> Figure:
    """Decode state (MiB, log) and decode ms/token (mean, from 0) against context (log), one line
    per mixer."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    state_ax, ms_ax = fig.subplots(1, 2)
    for i, mixer in enumerate(dict.fromkeys(r["mixer"] for r in rows)):
        mine = [r for r in rows if r["mixer"] == mixer]
        x = [r["context"] for r in mine]
        style = {"color": f"C{i}", "marker": "o", "label": mixer}
        state_ax.plot(x, [r["state_bytes"] / 2**20 for r in mine], **style)
        ms_ax.plot(x, [r["decode_ms_mean"] for r in mine], **style)
    contexts = sorted({r["context"] for r in rows})
    for ax, label in ((state_ax, "decode state after the context (MiB, log scale)"),
                      (ms_ax, "decode ms / token (mean, batch 1)")):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("context (tokens, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    state_ax.set_yscale("log")
    ms_ax.set_ylim(bottom=0)
    fig.suptitle(f"Decode state and latency against context ({device})")
    return fig


if __name__ == "__main__":
    sys.exit(main())
