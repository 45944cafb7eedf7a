"""stage_common: the plumbing every stage CLI shares, below the stages and above `ttt_core`.

- `config_cli`: a stage CLI derived from its pydantic config (every field a flag, `--config
  FILE.yaml`, kept spellings, `command(cfg)` that rebuilds a config);
- `faults`: the failure rule (check before writing; one line and exit 2 bad input, 3 diverged,
  4 environment) and `run_cli`, the top-level handler that enforces it;
- `run_lock`: the advisory lock on a run directory, held by the one process writing into it.

The atomic-file, hashing, dotted-override and validation mechanisms live in `ttt_core` (the
model's own save format needs them). Imports no torch.
"""

from stage_common.config_cli import CliParser, positive_int, read_config_file
from stage_common.faults import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_ENVIRONMENT,
    NoSpaceError,
    free_bytes,
    is_no_space,
    output_dir_problem,
    run_cli,
)
from stage_common.run_lock import RunDirBusy, RunDirLock, RunDirUnusable

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_ENVIRONMENT",
    "CliParser",
    "NoSpaceError",
    "RunDirBusy",
    "RunDirLock",
    "RunDirUnusable",
    "free_bytes",
    "is_no_space",
    "output_dir_problem",
    "positive_int",
    "read_config_file",
    "run_cli",
]
