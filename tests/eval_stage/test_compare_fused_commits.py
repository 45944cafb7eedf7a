"""scripts/compare_fused_commits.py: another commit's fused op against this tree's, interleaved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_fused_commits.py"
TINY = ["--heads", "2", "--seq-len", "32", "--head-dim", "8", "--chunk", "8"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_head_against_the_tree_writes_every_case_and_ratio(tmp_path):
    out = tmp_path / "ab.json"
    done = run("--old", "HEAD", *TINY, "--rounds", "3", "--warmup", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["ms"]) == {"floor", "old_fwd", "new_fwd", "old_fwd_bwd", "new_fwd_bwd"}
    assert all(len(times) == 3 and min(times) > 0 for times in result["ms"].values())
    ratio = result["ratios"]["new_over_old_fwd_bwd"]
    assert ratio["p2.5"] <= ratio["median"] <= ratio["p97.5"]


def test_an_unknown_commit_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "ab.json"
    done = run("--old", "no-such-rev", *TINY, "--out", str(out))
    assert done.returncode != 0
    assert done.stderr.startswith("error: cannot read ttt_core/ops/ttt_linear/fused.py")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
