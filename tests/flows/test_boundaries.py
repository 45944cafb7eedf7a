"""The seams between packages hold: flows uses only the stages' public API (the names each
exports from its `__init__`), and the packages import each other in one direction only."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("data_stage", "train_stage", "eval_stage", "serve_stage", "ttt_core", "stage_common")
# What a package may import at module import time (lazy imports inside functions are seams
# that load on demand: eval_stage reads a train_stage run dir only when asked to).
# stage_common is the plumbing every stage shares: no stage is imported by it, and no stage
# holds plumbing another stage needs.
MAY_IMPORT = {
    "ttt_core": set(),
    "stage_common": {"ttt_core"},
    "data_stage": {"ttt_core", "stage_common"},
    "train_stage": {"ttt_core", "stage_common", "data_stage"},
    "eval_stage": {"ttt_core", "stage_common", "data_stage"},
    "serve_stage": {"ttt_core", "stage_common", "data_stage"},
    "flows": {"ttt_core", "stage_common", "data_stage", "train_stage", "eval_stage", "serve_stage"},
}


def imports(tree: ast.AST, top_level_only: bool = False) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in `tree`; `top_level_only` skips function bodies."""
    found = []
    nodes = ast.walk(tree) if not top_level_only else _outside_functions(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
    return found


def _outside_functions(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield node
        yield from _outside_functions(node)


def private_stage_imports(source: str) -> list[str]:
    """Each import of `source` that reaches past a stage's public API: a module below the
    top-level package, or a name starting with `_`."""
    problems = []
    for line, module, names in imports(ast.parse(source)):
        if module.split(".")[0] not in STAGES:
            continue
        if "." in module:
            problems.append(f"line {line}: {module} is not a top-level package")
        problems += [f"line {line}: {module}.{n} is private" for n in names if n.startswith("_")]
    return problems


def flows_files() -> list[Path]:
    return sorted(p for p in (ROOT / "flows").glob("*.py"))


def test_the_check_catches_private_imports():
    source = (
        "from train_stage.distributed import torchrun_command\n"
        "import ttt_core.config\n"
        "def f():\n    from data_stage import _parser\n"
        "from eval_stage import EVALS\nimport json\n"
    )
    assert private_stage_imports(source) == [
        "line 1: train_stage.distributed is not a top-level package",
        "line 2: ttt_core.config is not a top-level package",
        "line 4: data_stage._parser is private",
    ]


@pytest.mark.parametrize("path", flows_files(), ids=lambda p: p.name)
def test_flows_imports_only_the_stages_public_api(path):
    assert private_stage_imports(path.read_text()) == []


@pytest.mark.parametrize("path", flows_files(), ids=lambda p: p.name)
def test_every_stage_name_flows_imports_is_exported(path):
    for line, module, names in imports(ast.parse(path.read_text())):
        if module in STAGES:
            public = set(importlib.import_module(module).__all__)
            missing = [n for n in names if n not in public]
            assert not missing, f"{path.name}:{line}: {module} does not export {missing}"


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_in_one_direction(package):
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module, _ in imports(ast.parse(path.read_text()), top_level_only=True):
            root = module.split(".")[0]
            if root in MAY_IMPORT and root != package and root not in MAY_IMPORT[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert problems == []


def test_the_torch_free_shared_modules_load_without_torch():
    code = (
        "import sys, ttt_core, stage_common\n"
        "ttt_core.sha256_file, ttt_core.deep_merge, ttt_core.error_summary\n"
        "ttt_core.telemetry_off, ttt_core.IdentityConfig, ttt_core.ConfigModel\n"
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
