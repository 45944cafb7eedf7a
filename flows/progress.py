"""Training's progress as a Prefect progress artifact: created at the first step line
train_stage prints, updated as the percentage moves, so the flow run page shows how far along
training is and the last line it logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

from train_stage import parse_step

PROGRESS_KEY = "training-progress"


class TrainingProgress:
    """A line handler for `run_streaming`: every line goes on to `forward`; step lines also
    move the artifact, at most once per `every_s` seconds (and always at the last step)."""

    def __init__(self, run_name: str, forward: Callable[[str], None], every_s: float = 2.0):
        self.run_name, self.forward, self.every_s = run_name, forward, every_s
        self.artifact: UUID | None = None
        self.last_update = float("-inf")
        self.failed = False

    def __call__(self, line: str) -> None:
        self.forward(line)
        parsed = parse_step(line)
        if parsed is None:
            return
        step, total = parsed
        now = time.monotonic()
        if step < total and now - self.last_update < self.every_s:
            return
        self.last_update = now
        self.publish(100.0 * step / total, f"{self.run_name}: {line.strip()}")

    def publish(self, percent: float, description: str) -> None:
        """Create or move the artifact. It only shows progress: an API error is logged once
        through `forward` and never stops training."""
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact is None:
                self.artifact = create_progress_artifact(
                    percent, key=PROGRESS_KEY, description=description
                )
            else:
                update_progress_artifact(self.artifact, percent, description=description)
        except Exception as e:  # any API failure: the artifact is display only
            if not self.failed:
                self.forward(f"[flows] progress artifact not updated: {e}")
            self.failed = True
