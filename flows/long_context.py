"""The `long-context` flow: every family pretrained at one length, extended to a longer one, then
compared at several lengths against a reference, for several seeds.

Each seed is one bring-up (the `bringup` flow, run as a subflow): its model is the reference
(`attention` unless told otherwise), its controls are the other families, and the preset sets
`extend_seq_len` and `long_context`, so the bring-up trains, extends and evaluates them all and
ends with `eval_stage long-context`. Seeds after the first read the first one's tokenizer and
shards. Then the seeds' results are put side by side (`eval_stage.long_context_seeds`) in
`<run_root>/<preset>-seeds/`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from eval_stage import (
    combine_seeds,
    read_long_context,
    seed_summary_markdown,
    summarize_seeds,
    write_seed_summary,
)
from flows.bringup import bringup
from flows.choices import LONG_CONTEXT_PRESET, LONG_CONTEXT_SEEDS, PresetName
from flows.request import BringupRequest, InvalidRequest, resolve, served_location
from ttt_core import Family


def seed_requests(
    preset: PresetName,
    seeds: list[int],
    reference: Family,
    families: list[Family] | None,
    overrides: dict[str, Any] | None = None,
) -> list[BringupRequest]:
    """One bring-up request per seed (`overrides`: dotted PipelineConfig keys for all of them),
    the seeds after the first reading its data; refused (InvalidRequest) for no seeds, repeated
    seeds, a key the flow sets itself, or a preset without the comparison."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidRequest(f"seeds must be distinct and at least one, got {seeds}")
    common: dict[str, Any] = dict(overrides or {})
    for key in ("train.seed", "run_name", "data_from", "controls", "mixer"):
        if key in common:
            raise InvalidRequest(
                f"override {key!r} is set by the long-context flow (use seeds, reference, families)"
            )
    if families is not None:
        common["controls"] = [f for f in families if f != reference]

    def request(seed: int, **more: Any) -> BringupRequest:
        overrides = {**common, "train.seed": seed, "run_name": f"{preset}-seed{seed}", **more}
        return BringupRequest(preset=preset, mixer=reference, overrides=overrides)

    first = resolve(request(seeds[0]), *served_location())
    if first.long_context is None or first.extend_seq_len is None:
        raise InvalidRequest(
            f"preset {preset!r} sets no extension and long-context eval; use {LONG_CONTEXT_PRESET!r} "
            "or set extend_seq_len and long_context"
        )
    data = str(first.run_dir)
    return [request(seeds[0])] + [request(seed, data_from=data) for seed in seeds[1:]]


@flow(name="long-context", log_prints=True)
def long_context(
    preset: PresetName = LONG_CONTEXT_PRESET,
    seeds: list[int] = list(LONG_CONTEXT_SEEDS),  # noqa: B006 (never mutated; the form's default)
    reference: Family = "attention",
    families: list[Family] | None = None,
    overrides: dict[str, Any] = {},  # noqa: B006 (never mutated; the form's default)
    refresh: bool = False,
) -> dict[str, Any]:
    """Pretrain, extend and compare every family at growing lengths, once per seed.

    Args:
        preset: a pipeline preset with `extend_seq_len` and `long_context` (`long_context_cpu`:
            pretrain at 256, extend to 1024, compare at 256-2048 on the embedded corpus).
        seeds: one bring-up per seed (init and data order); the spread is reported beside
            each seed's paired interval.
        reference: the family every other is compared against.
        families: the families compared with it; None: the preset's controls.
        overrides: dotted PipelineConfig keys for every seed's bring-up, as `flows run --set`:
            {"extend.steps": 50, "long_context.sequences": 32}.
        refresh: rerun every stage, ignoring the cache.
    """
    requests = seed_requests(preset, seeds, reference, families, overrides)
    run_root, mlflow_uri = served_location()
    results, sources = {}, []
    for seed, request in zip(seeds, requests, strict=True):
        cfg = resolve(request, run_root, mlflow_uri)
        bringup(**request.model_dump(), refresh=refresh)
        path = cfg.stage_dir("long_context") / "long_context.json"
        results[seed] = read_long_context(path)
        sources.append(str(path))
    summary = combine_seeds(results, sources)
    out = run_root.expanduser().resolve() / f"{preset}-seeds"
    files = write_seed_summary(summary, out)
    create_markdown_artifact(seed_summary_markdown(summary), key="long-context-seeds",
                             description=f"{len(seeds)} seeds against {reference}")  # fmt: skip
    print(f"long context over seeds {seeds} (vs {reference}):\n{summarize_seeds(summary)}")
    print("wrote " + ", ".join(map(str, files)))
    return {"files": [str(f) for f in files], "runs": sources}
