"""The Model Registry step: pyfunc versions of exports, `champion` moved only on an
interval-supported improvement, and `models:/NAME@champion` loaded by MLflow, eval_stage and
serve_stage alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.fingerprint import export_sha256
from flows.registry import CHAMPION, EXPORT_TAG, Measured, champion_decision, register_export
from tests.serve_stage.helpers import write_export

OLD = Measured(5.0, 4.9, 5.1)


@pytest.mark.parametrize(
    ("new", "moves"),
    [
        (Measured(4.5, 4.4, 4.6), True),  # interval wholly below the champion's loss
        (Measured(4.95, 4.9, 5.0), False),  # lower, but the interval reaches the champion's
        (Measured(5.2, 5.1, 5.3), False),  # worse
        (Measured(4.0, None, None), False),  # no interval: never the champion
    ],
)
def test_the_champion_moves_only_when_the_interval_lies_below_it(new, moves):
    moved, why = champion_decision(new, OLD)
    assert moved is moves and why


def test_the_first_measured_version_is_the_champion():
    assert champion_decision(OLD, None)[0] is True
    assert champion_decision(Measured(None, None, None), None)[0] is False


def test_versions_register_load_and_serve_by_alias(tmp_path, debug_tiny_data, monkeypatch):
    import mlflow

    from eval_stage import open_model
    from serve_stage.source import load_served_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("reg", artifact_location=str(tmp_path / "artifacts"))
    created: list[str] = []

    def start_run() -> str:
        created.append(client.create_run(experiment).info.run_id)
        return created[-1]

    exports = {m: write_export(tmp_path / m, debug_tiny_data.tokenizer, m)
               for m in ("ttt_linear", "attention", "none")}  # fmt: skip

    def register(mixer: str, measured: Measured) -> dict:
        tags = {EXPORT_TAG: export_sha256(exports[mixer]), "git.commit": "abc"}
        return register_export(uri, start_run, exports[mixer], "ttt-test", measured, tags)

    first = register("ttt_linear", OLD)
    assert (first["version"], first["champion"]) == (1, True)
    again = register("ttt_linear", OLD)  # the same bytes: no new version, no new run
    assert again["version"] == 1 and len(created) == 1
    close = register("attention", Measured(4.95, 4.9, 5.0))
    assert (close["version"], close["champion"]) == (2, False)
    better = register("none", Measured(4.5, 4.4, 4.6))
    assert (better["version"], better["champion"]) == (3, True)
    champion = client.get_model_version_by_alias("ttt-test", CHAMPION)
    assert int(champion.version) == 3 and champion.tags["git.commit"] == "abc"
    assert champion.tags["val/loss"] == "4.5" and "below" in champion.tags["champion.decision"]
    assert "does not" in client.get_model_version("ttt-test", "2").tags["champion.decision"]

    assert mlflow.get_tracking_uri() != uri  # registering left the process's MLflow alone
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    alias = "models:/ttt-test@champion"
    model = mlflow.pyfunc.load_model(alias)
    assert model.metadata.get_input_schema().input_types() == [mlflow.types.DataType.string]
    out = model.predict(["a", "b"], params={"max_new_tokens": 3})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    served = load_served_model(alias, tmp_path / "state", "cpu")
    assert served.model.config.mixer == "none" and served.directory.parent.name == "artifacts"
    evaluated = open_model(alias)
    assert evaluated.config.mixer == "none" and evaluated.info["source"] == alias
    assert Path(served.directory / "model.safetensors").is_file()
