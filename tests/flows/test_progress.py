"""The training progress artifact: train_stage's step lines parsed back, and the artifact moved
at most once per interval but always at the last step."""

from __future__ import annotations

import pytest

from flows.progress import TrainingProgress
from train_stage.progress import Progress, parse_step


def printed_step_line(capsys, step: int, total: int, **extra: float) -> str:
    Progress(total, enabled=True).update(
        step, {"loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.0, "step_seconds": 0.1, **extra}
    )
    return capsys.readouterr().out.strip()


def test_the_trainers_step_lines_parse_back(capsys):
    assert parse_step(printed_step_line(capsys, 7, 40)) == (7, 40)
    assert parse_step("12:00:01 | INFO | " + printed_step_line(capsys, 40, 40, val_loss=2.0)) == (
        40,
        40,
    )
    for other in ("[train] resumed from step_00000010 (step 10, ...)", "stopped by signal at "
                  "step 12; checkpoint ...", "the step 3/4 of a plan", ""):  # fmt: skip
        assert parse_step(other) is None


class Recorded(TrainingProgress):
    def publish(self, percent: float, description: str) -> None:
        self.published.append((percent, description))


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_every_line_goes_on_and_the_artifact_moves_at_most_once_per_interval(capsys, every_s):
    forwarded: list[str] = []
    progress = Recorded("debug_tiny-ttt_linear/train", forwarded.append, every_s=every_s)
    progress.published = []
    lines = ["[train] starting"] + [printed_step_line(capsys, s, 4) for s in range(1, 5)]
    for line in lines:
        progress(line)
    assert forwarded == lines
    percents = [p for p, _ in progress.published]
    # no interval: every step; an hour: the first step and the last, which always shows
    assert percents == ([25.0, 50.0, 75.0, 100.0] if every_s == 0 else [25.0, 100.0])
    assert progress.published[-1][1] == f"debug_tiny-ttt_linear/train: {lines[-1]}"


def test_an_api_failure_is_reported_once_and_never_raised(capsys, monkeypatch):
    import prefect.artifacts

    def down(*_args, **_kwargs):
        raise ConnectionError("server gone")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", down)
    forwarded: list[str] = []
    progress = TrainingProgress("run", forwarded.append, every_s=0.0)
    lines = [printed_step_line(capsys, s, 3) for s in (1, 2, 3)]
    for line in lines:
        progress(line)
    notes = [f for f in forwarded if f not in lines]
    assert notes == ["[flows] progress artifact not updated: server gone"]
