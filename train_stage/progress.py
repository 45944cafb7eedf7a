"""One terminal line per logged step: step/total, loss, lr, tokens/s and ETA."""

from __future__ import annotations

import re
import sys

_STEP = re.compile(r"(?:^|[\s:\]])step (\d+)/(\d+)  loss ")


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """ETA from an exponential moving average of step time (eval and save time excluded)."""

    def __init__(self, total: int, enabled: bool, smoothing: float = 0.1):
        self.total, self.enabled, self.smoothing = total, enabled, smoothing
        self.step_seconds: float | None = None

    def update(self, step: int, record: dict[str, float]) -> None:
        seconds = record.get("step_seconds")
        if seconds is not None:
            self.step_seconds = (
                seconds
                if self.step_seconds is None
                else ((1 - self.smoothing) * self.step_seconds + self.smoothing * seconds)
            )
        if not self.enabled:
            return
        eta = format_duration((self.total - step) * (self.step_seconds or 0.0))
        parts = [
            f"step {step}/{self.total}",
            f"loss {record['loss']:.4f}",
            f"lr {record['lr']:.2e}",
            f"tok/s {record['tokens_per_s']:,.0f}",
            f"ETA {eta}",
        ]
        if record.get("val_loss") is not None:
            parts.append(f"val {record['val_loss']:.4f}")
        if record.get("checkpoint_seconds") is not None:
            parts.append(f"saved ({record['checkpoint_seconds']:.2f}s)")
        print("  ".join(parts), file=sys.stdout, flush=True)


def parse_step(line: str) -> tuple[int, int] | None:
    """(step, total) of a line `Progress.update` printed (at its start, possibly after a log
    prefix); None for any other line."""
    match = _STEP.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None
