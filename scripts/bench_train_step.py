"""Training-step throughput of a recipe's models, TTT-Linear against the no-context control, and
what TTT-Linear would reach if its scan cost nothing.

    python scripts/bench_train_step.py --out docs/results/bench_train_step.json

Per mixer of `--mixers`, the model of `--preset` (a `train_stage` recipe, with the recipe's
tuned model values for that mixer) with random weights and AdamW; one step is the trainer's:
forward on (batch, seq_len) random ids with labels, backward, gradient clipping, optimizer step.
`ttt_linear-free-scan` is TTT-Linear whose dual-form scan is replaced by `z = q` (same
projections, RoPE, gates and output projection; the scan's inputs still get gradients): the
best a faster op could make the model. Every model and input is built before any timing, then
the rows are timed interleaved (round r runs each once, after `--warmup` untimed rounds), so
load that changes mid-run reaches all alike. Reported: median tokens/s per row, and per row
its throughput over the control's, as the median of the per-round paired ratios with the
2.5-97.5 percentiles of those ratios. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from stage_common.allocator import keep_freed_memory
from stage_common.config_cli import describe_refusal, positive_int
from train_stage.config import TRAIN_PRESETS, TrainConfig
from ttt_core import TTTLM, ModelConfig
from ttt_core.mixers.ttt_linear import TTTLinearMixer
from ttt_core.ops import DualResult

FREE_SCAN = "ttt_linear-free-scan"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="small_cpu", choices=sorted(TRAIN_PRESETS), help="train_stage recipe"
    )
    parser.add_argument(
        "--mixers",
        default=f"ttt_linear,none,{FREE_SCAN}",
        help=f"comma-separated mixers, each compared with 'none' (which must be one); also {FREE_SCAN}",
    )
    parser.add_argument("--rounds", type=positive_int, default=9, help="timed rounds")
    parser.add_argument("--warmup", type=positive_int, default=2, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    args.mixers = [m for m in args.mixers.split(",") if m]
    if "none" not in args.mixers:
        parser.error("--mixers must include 'none', the control every row is compared with")
    for mixer in args.mixers:  # refused before any model is built
        try:
            recipe(args.preset, mixer)
        except ValueError as e:
            parser.error(f"--mixers {mixer}: {describe_refusal(e)}")
    return args


def recipe(preset: str, mixer: str) -> TrainConfig:
    """The recipe for this row's family; data and run_dir are placeholders nothing reads."""
    family = "ttt_linear" if mixer == FREE_SCAN else mixer
    fields = {**TrainConfig.preset_dict(preset, family), "data": ".", "run_dir": "."}
    return TrainConfig.model_validate(fields)


@contextmanager
def free_scan():
    """TTT-Linear's scan replaced by z = q (a graph that still reaches k, v and eta)."""

    def identity_scan(self, q, k, v, eta, state, first_pos, with_inner_loss):
        z = q + 0 * (k + v) + 0 * eta[..., None].to(q.dtype)
        return DualResult(z, state.W, state.W, None)

    real = TTTLinearMixer._scan
    TTTLinearMixer._scan = identity_scan
    try:
        yield
    finally:
        TTTLinearMixer._scan = real


def make_step(mixer: str, preset: str, seed: int):
    """(a no-argument training step, tokens per step) for one row."""
    cfg = recipe(preset, mixer)
    torch.manual_seed(seed)
    model = TTTLM(ModelConfig.model_validate(cfg.model.model_dump()))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    patch = free_scan if mixer == FREE_SCAN else nullcontext

    def step():
        with patch():
            out = model(inputs, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, cfg.batch_size * cfg.seq_len


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> None:
    args = parse_args()
    allocator = keep_freed_memory()  # as the trainer runs
    steps = {m: make_step(m, args.preset, args.seed) for m in args.mixers}
    for _ in range(args.warmup):
        for step, _ in steps.values():
            step()
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.rounds):
        for mixer, (step, _) in steps.items():
            start = time.perf_counter()
            step()
            times[mixer].append(time.perf_counter() - start)
    rows = []
    for mixer, (_, tokens) in steps.items():
        ratios = [c / t for c, t in zip(times["none"], times[mixer], strict=True)]
        rows.append(
            {
                "mixer": mixer,
                "median_step_s": statistics.median(times[mixer]),
                "tokens_per_s": tokens / statistics.median(times[mixer]),
                "over_none": statistics.median(ratios),
                "over_none_interval": [percentile(ratios, 0.025), percentile(ratios, 0.975)],
                "times_s": times[mixer],
            }
        )
    print(
        f"{args.preset}: {torch.get_num_threads()} threads, torch {torch.__version__}; {allocator}"
    )
    print(f"{'mixer':24s} {'tokens/s':>9s} {'over none (paired, 2.5-97.5%)':>32s}")
    for r in rows:
        low, high = r["over_none_interval"]
        print(
            f"{r['mixer']:24s} {r['tokens_per_s']:9.0f} {r['over_none']:10.3f} [{low:.3f}, {high:.3f}]"
        )
    result = {
        "preset": args.preset,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "allocator": allocator,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
