"""train_stage: torchrun training with classic FSDP, exact resume and MLflow tracking."""
