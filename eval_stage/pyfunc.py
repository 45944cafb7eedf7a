"""An export as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(["Once"])`
returns one generated continuation per prompt.

The export (weights, tokenizer, checksums) travels as the model's `export` artifact and the
packages it needs to load as its code, so the logged model loads wherever torch and
sentencepiece are installed, not only inside this project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import data_stage
import eval_stage
import stage_common
import ttt_core
from stage_common.mlflow_models import EXPORT_ARTIFACT

INPUT_EXAMPLE = ["The"]
DEFAULT_MAX_NEW_TOKENS = 32
# what a logged model needs besides its own code: the packages below are carried as code
PIP_REQUIREMENTS = ("torch", "sentencepiece", "safetensors", "numpy", "pydantic>=2", "pyyaml",
                    "pyarrow", "matplotlib", "filelock")  # fmt: skip
CODE_PACKAGES = (ttt_core, data_stage, eval_stage, stage_common)


def signature() -> ModelSignature:
    """Prompts in (strings), continuations out (strings); greedy unless `temperature` > 0."""
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
            ParamSpec("temperature", "double", 0.0),
            ParamSpec("seed", "long", 0),
        ]),
    )  # fmt: skip


class ExportedLM(mlflow.pyfunc.PythonModel):
    """Generates from the export artifact with `eval_stage.generate_text`."""

    def load_context(self, context: Any) -> None:
        self.loaded = eval_stage.open_model(Path(context.artifacts[EXPORT_ARTIFACT]))
        if self.loaded.tokenizer is None:
            raise ValueError("the export has no tokenizer/: re-export it")

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads hints as schema
        """`model_input`: a list of prompts, or a one-column DataFrame of them."""
        prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else model_input
        params = params or {}
        config = eval_stage.GenerateConfig(
            max_new_tokens=int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            temperature=float(params.get("temperature", 0.0)),
            seed=int(params.get("seed", 0)),
        )
        return [eval_stage.generate_text(self.loaded, str(p), config) for p in prompts]


def log_export_model(export_dir: Path, name: str = "model") -> Any:
    """Log `export_dir` as a pyfunc model into the active MLflow run; returns its ModelInfo."""
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=ExportedLM(),
        artifacts={EXPORT_ARTIFACT: str(export_dir)},
        code_paths=[str(Path(p.__file__).parent) for p in CODE_PACKAGES],
        signature=signature(),
        input_example=INPUT_EXAMPLE,
        pip_requirements=list(PIP_REQUIREMENTS),
    )
