#!/usr/bin/env bash
# Creates the reference venv (.venv-ref/, git-ignored) with PyTorch, ONNX,
# ONNX Runtime, safetensors, Pillow and PyYAML from PyPI, and prints its path.
#
#   scripts/reference/setup-venv.sh          # idempotent: reuses a working venv
#   VENV=/some/where scripts/reference/setup-venv.sh
#
# PyPI's Linux torch wheel depends on the CUDA runtime packages (nvidia-*); pip
# installs them too (measured here: 2 min 7 s, 5.5 GB venv). They are unused:
# everything in scripts/reference/ runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv-ref}"
PY="$VENV/bin/python"
PKGS=(torch onnx onnxruntime numpy pillow safetensors pyyaml)
if [ -x "$PY" ] && "$PY" -c "import torch, onnx, onnxruntime, numpy, PIL, safetensors, yaml" 2>/dev/null; then
    echo "$VENV"
    exit 0
fi
command -v python3 >/dev/null || { echo "setup-venv: needs python3" >&2; exit 1; }
python3 -m venv "$VENV" || { echo "setup-venv: python3 -m venv $VENV failed (apt-get install python3-venv?)" >&2; exit 1; }
echo "setup-venv: installing ${PKGS[*]} into $VENV (several GB with torch's CUDA packages)" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}" >&2 \
    || { echo "setup-venv: pip install failed (is PyPI reachable?)" >&2; exit 1; }
"$PY" -c "import torch, onnxruntime; print('setup-venv: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)" >&2
echo "$VENV"
