#!/usr/bin/env bash
# Refresh the locked test environment, on purpose: `bash scripts/lock.sh`, then review the diff
# of requirements/ and commit it with the test run that passed on it.
#
# requirements/lock-linux-x86_64-py311.txt: every package of pyproject.toml and all its extras
#   (dev, triton, fla, hf, lm-eval), resolved for CPython 3.11 on x86_64 Linux against the CPU
#   build of torch 2.13.0, pinned with sha256 hashes. torch itself is left out (setup_env.sh
#   installs the CPU wheel, or keeps a torch you installed yourself); its dependencies are in.
# requirements/lowest-transformers.txt: the lowest transformers pyproject.toml allows, hashed;
#   scripts/test.sh runs the HF interop tests on it as well.
#
# Uses uv (installed into a throwaway virtualenv when not on PATH). The CPU torch wheel comes
# from /opt/wheels when that holds it, else from download.pytorch.org/whl/cpu.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out_dir=requirements
torch_pin="torch==2.13.0+cpu"

uv_bin="$(command -v uv || true)"
if [ -z "$uv_bin" ]; then
  tools="$(mktemp -d)"
  trap 'rm -rf "$tools"' EXIT
  "${PYTHON:-python3}" -m venv "$tools/venv"
  "$tools/venv/bin/python" -m pip install -q "uv>=0.9,<1"
  uv_bin="$tools/venv/bin/uv"
fi

torch_source=(--find-links /opt/wheels)
if ! ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
overrides="$(mktemp)"
echo "$torch_pin" >"$overrides"
mkdir -p "$out_dir"

"$uv_bin" pip compile pyproject.toml --all-extras --quiet \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  "${torch_source[@]}" --override "$overrides" --no-emit-package torch \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
  -o "$out_dir/lock-linux-x86_64-py311.txt"

lowest="$(sed -n 's/.*"\(transformers>=[^",]*\).*/\1/p' pyproject.toml | head -1)"
echo "${lowest/>=/==}" | "$uv_bin" pip compile - --no-deps --quiet \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
  -o "$out_dir/lowest-transformers.txt"
rm -f "$overrides"

echo "[lock] wrote $out_dir/lock-linux-x86_64-py311.txt ($(grep -c '^[a-z0-9]' "$out_dir/lock-linux-x86_64-py311.txt") packages) and $out_dir/lowest-transformers.txt"
grep -E '^(transformers|prefect|mlflow|pydantic|triton|fla-core|lm-eval|numpy)==' "$out_dir/lock-linux-x86_64-py311.txt" | sed 's/ .*//;s/^/[lock]   /'
