"""The `resume` flow: finish every bring-up under a run root that is neither completed nor
running, each as a `bringup` subflow with its recorded config (training resumes from its latest
checkpoint, finished stages come from the cache)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.bringup import bringup
from flows.record import RECORD_FILE, BringupRecord, lock_owner, read_record


def unfinished(run_root: Path) -> list[BringupRecord]:
    """Records under `run_root/*/bringup.json` not completed and without a live lock."""
    found = []
    for path in sorted(Path(run_root).glob(f"*/{RECORD_FILE}")):
        record = read_record(path.parent)
        if record and record.status != "completed" and lock_owner(path.parent) is None:
            found.append(record)
    return found


@flow(name="resume")
def resume(run_root: str) -> dict[str, str]:
    """Resume each unfinished bring-up (its recorded request, resolved under this process's run
    root, which the deployment (`flows deploy`) sets to `run_root`); returns run name -> final state name. Each
    resume counts as a restart, so a bring-up that keeps failing stops at its `max_restarts`."""
    logger = get_run_logger()
    states = {}
    for record in unfinished(Path(run_root)):
        cfg = record.config
        if record.request is None:
            logger.warning("%s predates recorded requests; run it again by hand", cfg.run_dir)
            continue
        logger.info("resuming %s (status %s)", cfg.run_dir, record.status)
        state = bringup(
            **record.request.model_dump(), restart_count=record.restart_count + 1, return_state=True
        )
        states[str(cfg.run_name)] = state.name
    if not states:
        logger.info("nothing to resume under %s", run_root)
    return states
