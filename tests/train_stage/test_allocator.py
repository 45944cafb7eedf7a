"""stage_common.allocator: freed memory stays in the process, so a step that re-allocates the
tensors the last step freed page-faults nothing in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from stage_common.allocator import allocator_state, keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
def step():
    for _ in range(4):
        torch.ones(8 << 20)  # 32 MiB, freed at once
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "state": allocator_state()}))
"""


def probe(mode: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_repeated_step_faults_its_pages_in_only_without_it():
    plain, kept = probe("plain"), probe("keep")
    assert plain["state"] == "the C allocator's defaults"
    assert kept["state"].startswith("glibc malloc keeps freed memory")
    pages_per_step = 4 * (32 << 20) // 4096
    assert plain["faults"] >= 5 * pages_per_step // 2  # every step maps its blocks afresh
    assert kept["faults"] < pages_per_step // 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_environment_variable_leaves_the_allocator_alone():
    kept = probe("keep", TTT_KEEP_FREED_MEMORY="0")
    assert kept["state"] == "C allocator left as is (TTT_KEEP_FREED_MEMORY=0)"
    assert kept["faults"] > 1000
