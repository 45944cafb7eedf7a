"""Val loss of several models on the same rows, with paired 95% intervals of their differences.

    python scripts/compare_paired.py --data runs/X/shards --out docs/results/cmp.json \\
        runs/X/export runs/X/controls/swa/export ...

The first model is the reference. Each model's per-token losses over every row of the val split
(`eval_stage.perplexity.token_losses`, rows cropped to the shards' length); a model's loss is the
sum over all rows / predicted tokens. For each other model, `other - reference` with a percentile
bootstrap over rows that resamples the *same* rows for both (so the row-to-row spread that both
models share cancels): an interval that excludes 0 supports "better" or "worse".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from eval_stage.bootstrap import ratio_interval
from eval_stage.data import open_val, row_batches
from eval_stage.models import open_model
from eval_stage.perplexity import row_loss_sums
from ttt_core.files import atomic_write_text

SAMPLES, SEED = 2000, 0


def model_losses(path: Path, data: Path, batch_size: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(model info, per-row loss sums (n,), per-row predicted tokens (n,)) over the whole val split."""
    loaded = open_model(path)
    ds = open_val(data)
    sums, counts = row_loss_sums(loaded.model, row_batches(ds, batch_size, ds.seq_len, None))
    info = {"path": str(path), "mixer": loaded.config.mixer_name,
            "params": loaded.config.num_params(), **loaded.info}  # fmt: skip
    return info, sums, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="exports or run dirs; first = reference")
    p.add_argument("--data", type=Path, required=True, help="the shards the val rows come from")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    measured = [model_losses(m, args.data, args.batch_size) for m in args.models]
    _, ref_sums, counts = measured[0]
    rows = []
    for info, sums, _ in measured:
        loss = math.fsum(sums) / counts.sum()
        lo, hi = ratio_interval(sums, counts, SAMPLES, SEED)
        d_lo, d_hi = ratio_interval(sums - ref_sums, counts, SAMPLES, SEED)
        rows.append({**info, "val_loss": loss, "ci95": [float(lo), float(hi)],
                     "minus_reference": float((sums - ref_sums).sum() / counts.sum()),
                     "minus_reference_ci95": [float(d_lo), float(d_hi)]})  # fmt: skip
    lines = ["| model | params | val loss | 95% CI | minus reference | paired 95% CI |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['mixer']} | {r['params'] / 1e6:.2f}M | {r['val_loss']:.4f} | "
            f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] | {r['minus_reference']:+.4f} | "
            f"[{r['minus_reference_ci95'][0]:+.4f}, {r['minus_reference_ci95'][1]:+.4f}] |"
        )
    table = "\n".join(lines)
    print(table)
    result = {"command": " ".join(["python scripts/compare_paired.py", *(argv or sys.argv[1:])]),
              "rows_evaluated": len(counts), "tokens": int(counts.sum()),
              "bootstrap": {"samples": SAMPLES, "seed": SEED}, "models": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
