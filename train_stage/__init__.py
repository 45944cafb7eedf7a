"""train_stage: torchrun training with classic FSDP, exact resume and MLflow tracking.

Public API used by other packages: `command` / `export_command` / `parse_command` (the CLI
commands that train or export by hand, and what a command line stands for), `export_model` (a run's checkpoint → a `TTTLM.save_pretrained`
directory with tokenizer and provenance) and `load_run_model` (a run's latest weights, for
evaluating a run directory without an export).
"""

from .cli import command, export_command, parse_command
from .export import RunModel, export_model, load_run_model

__all__ = [
    "RunModel",
    "command",
    "export_command",
    "export_model",
    "load_run_model",
    "parse_command",
]
