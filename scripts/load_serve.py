"""Load test of `python -m serve_stage`: concurrent sessions at growing conversation lengths,
TTT-Linear against attention, on 127.0.0.1.

    python scripts/load_serve.py --out docs/results/serving.json

Per mixer, a random-weight export of `--preset` (throughput and memory do not depend on the
weights; `ignore_eos` keeps every reply at its length). Per N in `--sessions` and length L in
`--lengths`, a fresh server process (`--max-batch` N, every session hot in memory; RSS is a
high-water mark, so no point inherits another's): N sessions are created and filled to L
tokens (one prompt-only request each, max_tokens 0, untimed), then the measured turn: all N at
once send `--turn-tokens` new ids and stream `--new-tokens` tokens. Reported per (mixer, N, L):
time to first token p50/p99 over the N requests, tokens/s (N x new tokens / the turn's wall
time), the server's RSS before the sessions and after the turn, and the state bytes of one
session (`GET /v1/sessions/{id}`). Bounded: `--max-seconds` per mixer, after which the
remaining points are recorded as skipped. Writes JSON and prints a markdown table (the one in
docs/serving.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import torch

from data_stage import CorpusConfig, TokenizerConfig, train_tokenizer
from flows.up import free_port
from serve_stage import ServeConfig, launch
from train_stage.export import save_export
from ttt_core import TTTLM, ModelConfig


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def write_export(out: Path, preset: str, mixer: str, tokenizer: Path) -> Path:
    torch.manual_seed(0)
    model = TTTLM(ModelConfig.from_preset(preset, mixer=mixer)).eval()
    return save_export(model, out, tokenizer, {"step": 0, "tokens_seen": 0, "random_init": True})


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


async def fill(client: httpx.AsyncClient, model: str, sid: str, ids: list[int]) -> None:
    body = {"model": model, "prompt": ids, "max_tokens": 0, "session_id": sid}
    (await client.post("/v1/completions", json=body)).raise_for_status()


async def turn(client: httpx.AsyncClient, model: str, sid: str, ids: list[int], n: int) -> float:
    """Stream one reply of n tokens; the seconds to its first token."""
    body = {"model": model, "prompt": ids, "max_tokens": n, "temperature": 0, "stream": True,
            "ignore_eos": True, "return_token_ids": True, "session_id": sid}  # fmt: skip
    start, first = time.perf_counter(), None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith('data: {"error"'):
                raise RuntimeError(f"{sid}: {line}")
            if first is None and line.startswith("data: {") and '"token_ids"' in line:
                first = time.perf_counter() - start
    return first


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_point(base: str, model: str, vocab: int, n: int, length: int,
                        args: argparse.Namespace, pid: int) -> dict:  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        sids = []
        for _i in range(n):
            r = await client.post("/v1/sessions")
            sids.append(r.json()["id"])
        started = time.perf_counter()
        await asyncio.gather(*(fill(client, model, s, random_ids(length, vocab, i))
                               for i, s in enumerate(sids)))  # fmt: skip
        fill_s = time.perf_counter() - started
        new = [random_ids(args.turn_tokens, vocab, 1000 + i) for i in range(n)]
        started = time.perf_counter()
        ttft = await asyncio.gather(*(turn(client, model, s, ids, args.new_tokens)
                                      for s, ids in zip(sids, new, strict=True)))  # fmt: skip
        wall = time.perf_counter() - started
        rss = psutil.Process(pid).memory_info().rss
        info = (await client.get(f"/v1/sessions/{sids[0]}")).json()
    return {"sessions": n, "length": length, "fill_s": fill_s, "turn_s": wall,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
            "tokens_per_s": n * args.new_tokens / wall, "server_rss_bytes": rss,
            "state_bytes_per_session": info["state_bytes"], "tokens_seen": info["tokens_seen"]}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| mixer | sessions | length | TTFT p50 (s) | TTFT p99 (s) | tokens/s | server RSS "
             "(MiB): idle -> after | state per session (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['mixer']} | {r['sessions']} | {r['length']} | skipped "
                         "(--max-seconds) | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['mixer']} | {r['sessions']} | {r['length']} | {r['ttft_p50_s']:.3f} | "
            f"{r['ttft_p99_s']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{r['server_rss_idle_bytes'] / 2**20:.0f} -> {r['server_rss_bytes'] / 2**20:.0f} | "
            f"{r['state_bytes_per_session'] / 2**20:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", default="ttt_linear,attention")
    parser.add_argument("--preset", default="small_cpu", help="ModelConfig preset (shapes)")
    parser.add_argument("--sessions", type=ints, default=[1, 8, 32], help="N, comma separated")
    parser.add_argument("--lengths", type=ints, default=[256, 4096, 16384])
    parser.add_argument("--turn-tokens", type=int, default=32, help="new prompt ids per turn")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per turn")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="server threads")
    parser.add_argument("--max-seconds", type=float, default=1800, help="budget per mixer")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_tokenizer(TokenizerConfig(corpus=CorpusConfig(max_bytes=200_000), out=tmp / "tok",
                                        vocab_size=512))  # fmt: skip
        for mixer in args.mixers.split(","):
            export = write_export(tmp / mixer, args.preset, mixer, tmp / "tok")
            vocab = ModelConfig.from_preset(args.preset).vocab_size
            deadline = time.monotonic() + args.max_seconds
            for n in args.sessions:
                for length in args.lengths:
                    if time.monotonic() > deadline:
                        rows.append({"mixer": mixer, "sessions": n, "length": length,
                                     "skipped": True})  # fmt: skip
                        continue
                    # a fresh server per point: RSS is a high-water mark, and an earlier
                    # point's prefill must not count in this one's
                    config = ServeConfig(
                        model=str(export), state_dir=tmp / f"state-{mixer}-{n}-{length}",
                        port=free_port(), max_batch=n, hot_sessions=n, threads=args.threads,
                        max_context=length + args.turn_tokens + args.new_tokens,
                    )  # fmt: skip
                    server = launch(config, tmp / f"serve-{mixer}-{n}-{length}.log")
                    try:
                        idle = psutil.Process(server.pid).memory_info().rss
                        point = asyncio.run(measure_point(server.base_url.removesuffix("/v1"),
                                                          mixer, vocab, n, length, args,
                                                          server.pid))  # fmt: skip
                    finally:
                        server.process.terminate()
                        server.process.wait()
                    rows.append({"mixer": mixer, **point, "server_rss_idle_bytes": idle})
                    print(json.dumps(rows[-1]), flush=True)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__}, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
