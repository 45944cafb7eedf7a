#!/usr/bin/env bash
# Set up the environment (see setup_env.sh) and run lint + the whole test suite, slow tests
# included. Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow" -x
set -euo pipefail
export OPTIONAL_EXTRAS="${OPTIONAL_EXTRAS-triton fla hf lm-eval}"  # so the Triton kernels, FLA comparison, HF interop and lm-eval are tested
source "$(dirname "$0")/setup_env.sh"
echo "[test] ruff check"
ruff check .
echo "[test] pytest"
python -m pytest "$@"
