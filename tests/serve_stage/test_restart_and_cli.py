"""A SIGKILLed server restarted on its state directory continues every session exactly; the
CLI refuses what it cannot serve before it listens; a model can come from MLflow."""

from __future__ import annotations

import httpx
import pytest
from filelock import FileLock

from serve_stage.cli import main
from serve_stage.config import ServeConfig
from serve_stage.server import LOCK_FILE
from serve_stage.source import load_served_model

from ..helpers import run_main
from .server_process import ServerProcess

MODEL = "tiny-ttt"


def turn(proc: ServerProcess, prompt, n: int, session: str | None = None) -> list[int]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}  # fmt: skip
    if session is not None:
        body["session_id"] = session
    r = httpx.post(f"{proc.base}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def test_sessions_survive_sigkill_exactly(tmp_path, ttt_export):
    proc = ServerProcess(ttt_export, tmp_path / "state")
    prompts = {"a": [5, 6, 7, 8, 9], "b": [40, 41, 42]}
    history = {}
    try:
        for sid, prompt in prompts.items():
            httpx.post(f"{proc.base}/v1/sessions", json={"session_id": sid}).raise_for_status()
            history[sid] = [*prompt, *turn(proc, prompt, 6, sid)]
        proc.kill()  # SIGKILL: no shutdown code runs
        proc.start()  # the same --state-dir
        for sid in prompts:
            info = httpx.get(f"{proc.base}/v1/sessions/{sid}").json()
            assert info["tokens_seen"] == len(history[sid]) and not info["in_memory"]
            continued = turn(proc, [11, 12], 7, sid)
            assert continued == turn(proc, [*history[sid], 11, 12], 7)  # one request of it all
    finally:
        assert proc.terminate()


def test_the_cli_refuses_a_bad_model_or_a_busy_state_dir_in_one_line(tmp_path, ttt_export,
                                                                     capsys):  # fmt: skip
    code, _, err = run_main(main, ["--model", str(tmp_path / "none"), "--state-dir",
                                   str(tmp_path / "s")], capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "no such export directory" in err
    assert not (tmp_path / "s").exists()  # refused before anything was written
    (tmp_path / "s").mkdir()
    with FileLock(tmp_path / "s" / LOCK_FILE):
        code, _, err = run_main(main, ["--model", str(ttt_export), "--state-dir",
                                       str(tmp_path / "s")], capsys)  # fmt: skip
    assert code == 2 and "another server is using it" in err
    code, _, err = run_main(main, ["--model", str(ttt_export), "--state-dir", str(tmp_path),
                                   "--max-batch", "0"], capsys)  # fmt: skip
    assert code == 2 and "max_batch" in err and err.count("\n") == 1


def test_a_model_is_served_from_an_mlflow_run_uri(tmp_path, ttt_export, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("serve", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(ttt_export), artifact_path="model")
    config = ServeConfig(model=f"runs:/{run.info.run_id}/model", state_dir=tmp_path / "state")
    served = load_served_model(config.model, config.state_dir, "cpu")
    assert served.directory.parent == tmp_path / "state" / "models"
    assert served.model.config == load_served_model(str(ttt_export), tmp_path, "cpu").model.config
    again = load_served_model(config.model, config.state_dir, "cpu")  # downloaded once
    assert again.directory == served.directory
