"""train_stage: torchrun training with classic FSDP, exact resume and MLflow tracking.

Public API used by other packages: `export_model` (a run's checkpoint → a `TTTLM.save_pretrained`
directory with tokenizer and provenance) and `load_run_model` (a run's latest weights, for
evaluating a run directory without an export).
"""

from .export import RunModel, export_model, load_run_model

__all__ = ["RunModel", "export_model", "load_run_model"]
