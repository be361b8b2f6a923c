#!/usr/bin/env bash
# setup_trl.sh -- create the virtualenv that runs the TRL peer of the DPO benchmark
# (bench/dpo_trl_peer.py, driven by bench/dpo.py).
#
# Usage:  bash bench/setup_trl.sh [VENV_DIR]
#         (default VENV_DIR: bench/.venvs/trl, git-ignored)
#         PYTHON=/path/to/python3 overrides the interpreter used for the venv.
#
# Why a separate venv: trl pulls accelerate, datasets, pandas, pyarrow, ... and may move
# transformers or torch; the project's .venv must stay as it is.
#
# What is installed:
#   torch==2.13.0         the project's torch; on this machine pip takes the local CPU wheel
#                         (2.13.0+cpu, /opt/wheels), which sorts above PyPI's CUDA 2.13.0
#   transformers==5.24.0  the project's transformers
#   trl==1.16.0           DPOTrainer (1.16.0 is the release this benchmark was written against:
#                         DPOConfig.max_length/truncation_mode/precompute_ref_log_probs, the
#                         fused log-prob LM head)
#   datasets              TRL's dataset preparation (accelerate comes with trl)
#
# Idempotent: when the venv already imports these versions it does nothing (prints them).
# Exits 1 when a CUDA torch (nvidia-* packages) got in, which would only waste disk here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="${1:-$HERE/.venvs/trl}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="5.24.0"
TRL_VERSION="1.16.0"

PACKAGES=(
  "torch==${TORCH_VERSION}"
  "transformers==${TRANSFORMERS_VERSION}"
  "trl==${TRL_VERSION}"
  "datasets"
)

CHECK_PY='
import importlib.metadata as md, sys
import torch, transformers, trl, datasets, accelerate
from trl import DPOConfig, DPOTrainer
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert transformers.__version__ == sys.argv[2], transformers.__version__
assert trl.__version__ == sys.argv[3], trl.__version__
'

print_versions() {
  "$VENV_DIR/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("trl", "transformers", "torch", "accelerate", "datasets", "tokenizers", "safetensors", "numpy"):
    try:
        print(f"  {name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
if cuda:
    print("  WARNING: CUDA packages in the peer venv:", " ".join(cuda))
EOF
}

venv_ok() {
  [ -x "$VENV_DIR/bin/python" ] &&
    "$VENV_DIR/bin/python" -c "$CHECK_PY" "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$TRL_VERSION" >/dev/null 2>&1
}

if venv_ok; then
  echo "[setup_trl] $VENV_DIR already has trl ${TRL_VERSION}; nothing to do"
  print_versions
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "[setup_trl] creating venv $VENV_DIR with $("$PYTHON" -V 2>&1)"
  mkdir -p "$(dirname "$VENV_DIR")"
  "$PYTHON" -m venv "$VENV_DIR"
fi

echo "[setup_trl] installing: ${PACKAGES[*]} (~2.5 min the first time)"
# (this machine's pip config names local file:// indexes that pip warns about for every
# package it does not hold; those lines are noise and are dropped)
"$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet "${PACKAGES[@]}" 2>&1 |
  { grep -v "^WARNING: Location 'file:" || true; }

if ! "$VENV_DIR/bin/python" -c "$CHECK_PY" "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$TRL_VERSION"; then
  echo "[setup_trl] ERROR: the TRL venv does not import cleanly (see above)." >&2
  exit 1
fi
if "$VENV_DIR/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | grep -qi '^nvidia'; then
  echo "[setup_trl] ERROR: pip installed a CUDA torch (nvidia-* packages); expected the CPU wheel." >&2
  print_versions
  exit 1
fi

end=$(date +%s)
echo "[setup_trl] installed in $((end - start)) s into $VENV_DIR:"
print_versions
