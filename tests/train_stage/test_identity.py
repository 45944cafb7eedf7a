"""TrainConfig's identity: what decides the training trajectory, and nothing else."""

from __future__ import annotations

from train_stage.config import TrainConfig


def test_every_train_field_is_identity_or_operational():
    """A field added later must be put in IDENTITY_FIELDS or OPERATIONAL_FIELDS, with a reason."""
    assert TrainConfig.classification_errors() == []


def test_train_identity_nests_the_model_identity(tmp_path):
    base = TrainConfig.from_preset("debug_tiny", data=tmp_path / "d", run_dir=tmp_path / "r")
    operational = TrainConfig.from_preset(
        "debug_tiny",
        data=tmp_path / "elsewhere",
        run_dir=tmp_path / "r2",
        save_every=3,
        log_every=2,
        eval_every=5,
        eval_batches=9,
        keep_last=1,
        stats_every=0,
        stop_at=7,
        strategy="fsdp",
        mlflow={"enabled": False},
        model={"checkpoint_n_chunks": 2},
    )
    assert operational.identity() == base.identity()
    changed = TrainConfig.from_preset(
        "debug_tiny", data=tmp_path / "d", run_dir=tmp_path / "r", lr=1e-4, model={"n_layers": 3}
    )
    assert base.identity_differences(changed.model_dump(mode="json")) == {
        "lr": (3e-3, 1e-4),
        "model.n_layers": (2, 3),
    }
