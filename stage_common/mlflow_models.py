"""A model named by an MLflow URI (`runs:/`, `models:/NAME@ALIAS`, `mlflow-artifacts:/`),
fetched once into a local directory that eval_stage and serve_stage then load like an export.

The URI may name a bare export (files logged as artifacts) or the MLflow model a bring-up logs
(`eval_stage.pyfunc`): a directory with an `MLmodel` file whose pyfunc artifact `export` is
the export. Either way the caller gets the export directory. The download goes to a
temp directory renamed into place when complete, so an interrupted fetch leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ttt_core.files import sha256_bytes

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
EXPORT_ARTIFACT = "export"  # the pyfunc artifact that holds the export


class MlflowFetchError(ValueError):
    """The URI cannot be fetched (unknown model or alias, no server): one line naming it."""


def is_mlflow_uri(model: str) -> bool:
    return str(model).startswith(MLFLOW_SCHEMES)


def export_dir_of(directory: Path) -> Path:
    """The export inside a downloaded MLflow model (its pyfunc artifact `export`, as its
    `MLmodel` file places it), or `directory` itself for a bare export."""
    mlmodel = directory / "MLmodel"
    if not mlmodel.is_file():
        return directory
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(EXPORT_ARTIFACT)
    if artifact is None:
        raise MlflowFetchError(f"{directory}: an MLflow model without an {EXPORT_ARTIFACT!r} "
                               "artifact; log it with `eval_stage.pyfunc.log_export_model`")  # fmt: skip
    return directory / artifact["path"]


def fetch_export(uri: str, cache_dir: Path) -> Path:
    """The export behind `uri`, downloaded into `cache_dir/<sha of the URI>/` unless there.
    An alias is resolved when fetched: a cached `@champion` stays the version it was then."""
    target = Path(cache_dir) / sha256_bytes(uri.encode())[:16]
    if target.is_dir():
        return export_dir_of(target)
    import mlflow
    from mlflow.exceptions import MlflowException

    staging = target.with_name(f".{target.name}.download")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
        local.rename(target)
    except MlflowException as e:
        raise MlflowFetchError(f"{uri}: cannot fetch from MLflow: {e.message}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir_of(target)
