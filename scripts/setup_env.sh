# Sourced by the set-up scripts: make a Python environment with the project installed.
#
# Uses the active virtualenv when there is one (a GPU user's own CUDA torch survives), else
# creates ${VENV_DIR:-./.venv}. Installs EXACTLY the locked set (requirements/lock-*.txt, every
# package hashed; `bash scripts/lock.sh` refreshes it) when this is the platform it was locked
# for, CPython 3.11 on x86_64 Linux; elsewhere, or with RESOLVE=latest (`scripts/test.sh
# --latest`), the newest versions pyproject.toml's ranges allow. torch is installed as the
# pinned CPU wheel only when none is importable; a torch you installed is kept, with its triton.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$repo_root/requirements/lock-linux-x86_64-py311.txt"
venv_dir="${VENV_DIR:-$repo_root/.venv}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$venv_dir/bin/python" ]; then
    echo "[setup] creating virtualenv $venv_dir"
    "${PYTHON:-python3}" -m venv "$venv_dir"
  fi
  # shellcheck disable=SC1091
  source "$venv_dir/bin/activate"
fi
pip_install() { python -m pip install -q --disable-pip-version-check "$@"; }

own_torch=false
if python -c "import torch" 2>/dev/null; then
  own_torch=true
  echo "[setup] keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
fi
locked_platform="$(python -c 'import platform, sys; print(sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64")')"

if [ "${RESOLVE:-locked}" = "latest" ] || [ "$locked_platform" != "True" ]; then
  [ "$locked_platform" = "True" ] \
    || echo "[setup] the lock is for CPython 3.11 on x86_64 Linux; installing the newest versions pyproject.toml allows"
  $own_torch || pip_install torch==2.13.0
  echo "[setup] installing ttt-bringup[dev] at the newest allowed versions"
  pip_install --upgrade --upgrade-strategy eager -e "$repo_root[dev]"
  # Optional extras: installed when a wheel exists for this platform, else their tests skip.
  for extra in ${OPTIONAL_EXTRAS:-}; do
    pip_install --upgrade --upgrade-strategy eager -e "$repo_root[$extra]" 2>/dev/null \
      || echo "[setup] optional extra [$extra] has no installable wheel here; its tests will skip"
  done
else
  echo "[setup] installing the locked versions (${lock#"$repo_root"/})"
  locked="$(mktemp)"
  # A torch you installed brings the triton it was built with: keep it, not the lock's.
  if $own_torch; then
    awk '/^[^ #]/ { skip = ($0 ~ /^triton==/) } !skip' "$lock" >"$locked"
  else
    cp "$lock" "$locked"
  fi
  pip_install --require-hashes --no-deps -r "$locked"
  rm -f "$locked"
  $own_torch || pip_install --no-deps torch==2.13.0
  pip_install --no-deps -e "$repo_root"
  python -m pip check >/dev/null || {
    python -m pip check
    echo "[setup] the environment is inconsistent (above); refresh the lock: bash scripts/lock.sh" >&2
    exit 1
  }
fi
cd "$repo_root"
