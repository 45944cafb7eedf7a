# Sourced by the set-up scripts: make a Python environment with the project installed.
# Uses the active virtualenv when there is one (a GPU user's own CUDA torch survives), else
# creates ./.venv. torch is installed as the pinned CPU wheel only when none is importable.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$repo_root/.venv/bin/python" ]; then
    echo "[setup] creating virtualenv $repo_root/.venv"
    "${PYTHON:-python3}" -m venv "$repo_root/.venv"
  fi
  # shellcheck disable=SC1091
  source "$repo_root/.venv/bin/activate"
fi
if python -c "import torch" 2>/dev/null; then
  echo "[setup] using the installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch==2.13.0 (CPU wheel)"
  python -m pip install -q torch==2.13.0
fi
echo "[setup] installing ttt-bringup[${EXTRAS:-dev}]"
python -m pip install -q -e "$repo_root[${EXTRAS:-dev}]"
# Optional extras (OPTIONAL_EXTRAS="triton fla"): installed when a wheel exists for this platform,
# otherwise their tests skip and say why.
for extra in ${OPTIONAL_EXTRAS:-}; do
  python -m pip install -q -e "$repo_root[$extra]" 2>/dev/null \
    || echo "[setup] optional extra [$extra] has no installable wheel here; its tests will skip"
done
cd "$repo_root"
