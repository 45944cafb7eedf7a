"""train_stage: torchrun training with classic FSDP, exact resume and MLflow tracking.

Public API (what flows and other packages use; everything else is internal):
- `TrainConfig` (+ `CurriculumStage`, `MlflowConfig`, `TRAIN_PRESETS`): one run, validated;
- `TrainOutputs`: a run directory's files and whether the run completed;
- `torchrun_command`: the command line that runs `python -m train_stage` under torchrun;
- `command` / `export_command` / `parse_command`: the CLI commands that train or export by hand,
  and the config a command line stands for;
- `export_model`: a run's checkpoint → a `TTTLM.save_pretrained` directory with its tokenizer
  and provenance (`ttt_core.PretrainedOutputs` describes it); `load_run_model`: a run's latest
  weights, for evaluating a run directory without an export;
- `log_params` / `mlflow_params`: MLflow params of nested settings, batched as MLflow allows.
"""

from .cli import command, export_command, parse_command
from .config import TRAIN_PRESETS, CurriculumStage, MlflowConfig, TrainConfig
from .distributed import torchrun_command
from .export import RunModel, export_model, load_run_model
from .outputs import TrainOutputs
from .progress import parse_step
from .tracking import log_params, mlflow_params

__all__ = [
    "TRAIN_PRESETS",
    "CurriculumStage",
    "MlflowConfig",
    "RunModel",
    "TrainConfig",
    "TrainOutputs",
    "command",
    "export_command",
    "export_model",
    "load_run_model",
    "log_params",
    "mlflow_params",
    "parse_command",
    "parse_step",
    "torchrun_command",
]
