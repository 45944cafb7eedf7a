#!/usr/bin/env bash
# Set up the locked environment (see setup_env.sh) and run lint + the whole test suite, slow
# tests included, then the HF interop tests once more on the lowest transformers pyproject.toml
# allows. Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow" -x
#
#   bash scripts/test.sh --latest [pytest args]
#     Non-gating (CI never runs it): the newest versions every range allows, in .venv-latest,
#     then the same suite. Prints which versions differ from the lock, so an upstream break
#     shows up here as a report before anyone refreshes the lock.
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$repo_root/requirements/lock-linux-x86_64-py311.txt"
if [ "${1:-}" = "--latest" ]; then
  shift
  export RESOLVE=latest VENV_DIR="$repo_root/.venv-latest"
  unset VIRTUAL_ENV
fi
export OPTIONAL_EXTRAS="${OPTIONAL_EXTRAS-triton fla hf lm-eval}"  # ranges mode: the optional extras too
# shellcheck source=scripts/setup_env.sh
source "$repo_root/scripts/setup_env.sh"

if [ "${RESOLVE:-locked}" = "latest" ]; then
  echo "[test] versions that differ from the lock:"
  python - "$lock" <<'EOF'
import re, sys
from importlib.metadata import distributions
locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(sys.argv[1]).read(), re.M))
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
locked = {norm(k): v for k, v in locked.items()}
installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
changed = sorted((n, locked[n], v) for n, v in installed.items() if n in locked and locked[n] != v)
for name, old, new in changed:
    print(f"[test]   {name}: {old} (lock) -> {new}")
print(f"[test]   {len(changed)} of {len(locked)} locked packages differ")
EOF
fi

echo "[test] ruff check"
ruff check .
echo "[test] pytest"
python -m pytest "$@"

if [ "${RESOLVE:-locked}" = "locked" ] && python -c "import transformers" 2>/dev/null; then
  # The lowest transformers allowed, layered over this environment (its own site-packages first,
  # then this one's), so only transformers differs.
  lowest_venv="$repo_root/.venv-lowest-transformers"
  [ -x "$lowest_venv/bin/python" ] || python -m venv --without-pip "$lowest_venv"
  site_dir="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  lowest_site="$("$lowest_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$site_dir')" >"$lowest_site/zz_base_environment.pth"
  python -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
    --target "$lowest_site" --upgrade -r "$repo_root/requirements/lowest-transformers.txt"
  version="$("$lowest_venv/bin/python" -c 'import transformers; print(transformers.__version__)')"
  echo "[test] HF interop on the lowest allowed transformers ($version)"
  "$lowest_venv/bin/python" -m pytest -q -n 0 tests/ttt_core/test_hf.py
fi
