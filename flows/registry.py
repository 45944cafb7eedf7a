"""The bring-up's model in the MLflow Model Registry: every completed bring-up's export is
logged as a pyfunc model (`eval_stage.pyfunc`) and registered as a new version of
`ttt-<preset>-<mixer>`, tagged with what it was measured and trained on.

The alias `champion` marks the version to serve (`models:/ttt-small_cpu-ttt_linear@champion`).
It moves to a new version only when the new val loss is lower *and* its 95% interval lies wholly
below the champion's val loss: a lower point estimate inside the noise keeps the champion. A
version without a measured interval never takes it. Each version says why in its tag
`champion.decision`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from eval_stage import log_export_model

TRACKING_ENV = "MLFLOW_TRACKING_URI"
CHAMPION = "champion"
EXPORT_TAG = "export.sha256"  # the registered export's bytes: a rerun registers nothing new
VAL_LOSS, CI_LO, CI_HI = "val/loss", "val/loss_ci95_lo", "val/loss_ci95_hi"


def model_name(preset: str, mixer: str) -> str:
    """`ttt-<preset>-<mixer>` (registered model names allow `_`)."""
    return f"ttt-{preset}-{mixer}"


@dataclass(frozen=True)
class Measured:
    """A version's val loss and its 95% interval (either bound None when not measured)."""

    loss: float | None
    lo: float | None
    hi: float | None

    @classmethod
    def of_summary(cls, summary: dict[str, float]) -> Measured:
        return cls(summary.get(VAL_LOSS), summary.get(CI_LO), summary.get(CI_HI))

    @classmethod
    def of_tags(cls, tags: dict[str, str]) -> Measured:
        def number(key: str) -> float | None:
            return float(tags[key]) if key in tags else None

        return cls(number(VAL_LOSS), number(CI_LO), number(CI_HI))

    def tags(self) -> dict[str, str]:
        pairs = ((VAL_LOSS, self.loss), (CI_LO, self.lo), (CI_HI, self.hi))
        return {k: repr(v) for k, v in pairs if v is not None}


def champion_decision(new: Measured, champion: Measured | None) -> tuple[bool, str]:
    """(whether `new` takes the alias, why), by the rule in the module docstring."""
    if new.loss is None or new.hi is None:
        return False, "no val loss interval measured (run the perplexity eval)"
    if champion is None:
        return True, f"first version with a measured val loss ({new.loss:.4f})"
    if champion.loss is None:
        return True, "the champion has no measured val loss"
    if new.hi < champion.loss:
        return True, (f"val loss {new.loss:.4f}, interval [{new.lo:.4f}, {new.hi:.4f}] below "
                      f"the champion's {champion.loss:.4f}")  # fmt: skip
    return False, (f"val loss {new.loss:.4f} [{new.lo:.4f}, {new.hi:.4f}]: the interval does not "
                   f"lie below the champion's {champion.loss:.4f}")  # fmt: skip


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`log_model`, `register_model`) pointed at `uri` for this block only,
    through `MLFLOW_TRACKING_URI`: `mlflow.set_tracking_uri` would outlive it."""
    previous = os.environ.get(TRACKING_ENV)
    os.environ[TRACKING_ENV] = uri
    try:
        if mlflow.get_tracking_uri() != uri:
            raise RuntimeError(f"mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r}) was "
                               f"called in this process; cannot log to {uri}")  # fmt: skip
        yield
    finally:
        if previous is None:
            os.environ.pop(TRACKING_ENV)
        else:
            os.environ[TRACKING_ENV] = previous


def current_champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def current_version(client: MlflowClient, name: str) -> int | None:
    champion = current_champion(client, name)
    return None if champion is None else int(champion.version)


def registered_version(client: MlflowClient, name: str, export_sha256: str) -> Any | None:
    """The version of `name` registered from an export with these bytes, if any."""
    versions = client.search_model_versions(f"name = '{name}'")
    return next((v for v in versions if v.tags.get(EXPORT_TAG) == export_sha256), None)


def register_export(
    tracking_uri: str,
    start_run: Callable[[], str],
    export_dir: Path,
    name: str,
    measured: Measured,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log `export_dir` as a pyfunc model in the run `start_run()` creates, register it as a version of `name`
    tagged with `measured` and `tags` (which hold `EXPORT_TAG`), and move `champion` by `champion_decision`. Returns the
    version, its URI, whether it is the champion now, and why."""
    client = MlflowClient(tracking_uri)
    same = registered_version(client, name, tags[EXPORT_TAG])
    if same is not None:  # a rerun of a bring-up already registered: no duplicate version
        return {"name": name, "version": int(same.version), "uri": f"models:/{name}/{same.version}",
                "model_uri": same.source, "champion": current_version(client, name) == int(same.version),
                "decision": f"already registered as version {same.version}"}  # fmt: skip
    with fluent_tracking_uri(tracking_uri), mlflow.start_run(run_id=start_run()):
        info = log_export_model(export_dir)
    try:
        client.create_registered_model(
            name, description="TTT bring-up exports; `@champion` is the version to serve"
        )
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with fluent_tracking_uri(tracking_uri):
        version = mlflow.register_model(info.model_uri, name, tags={**tags, **measured.tags()})
    champion = current_champion(client, name)
    moved, why = champion_decision(
        measured, Measured.of_tags(champion.tags) if champion is not None else None
    )
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_model_version_tag(name, version.version, "champion.decision", why)
    return {"name": name, "version": int(version.version), "uri": f"models:/{name}/{version.version}",
            "model_uri": info.model_uri, "champion": moved, "decision": why}  # fmt: skip
