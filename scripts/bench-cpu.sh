#!/usr/bin/env bash
# CPU benchmark of the Table 3 GCM (1 grey channel, 2 classes, 64x64):
# gcm-inspect's engine, candle's stock ops, PyTorch eager and ONNX Runtime,
# measured in the same run with the same thread count, ROUNDS times
# interleaved; prints medians and ratios (see BENCHMARKS.md).
#
#   scripts/bench-cpu.sh [THREADS] [ROUNDS]
#
# Creates .venv-bench/ (git-ignored) with torch, onnx and onnxruntime from PyPI.
# PyPI's Linux torch wheel depends on the CUDA runtime packages; they are
# installed but unused (every measurement here is on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
ROUNDS=${2:-3}
VENV=.venv-bench
PY=$VENV/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c "import torch, onnx, onnxruntime" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q torch onnx onnxruntime numpy
fi
cargo build --release -q
BIN=target/release/gcm-inspect
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MODEL=$WORK/model
"$BIN" bench --model "$MODEL" --init --size 64 --channels 1 --classes ok,defect \
    --warmup 0 --iters 1 --min-seconds 0 >/dev/null
OUT=$WORK/results.jsonl
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
ours() { "$BIN" bench --model "$MODEL" --threads "$THREADS" --json "$@" >>"$OUT"; }
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    ours --batch 1 --warmup 10 --iters 50 --min-seconds 2
    ours --batch 32 --warmup 2 --iters 10 --min-seconds 2
    ours --batch 32 --mode train --warmup 2 --iters 5 --min-seconds 2
    ours --stock-ops --batch 1 --warmup 2 --iters 10 --min-seconds 2
    ours --stock-ops --batch 32 --warmup 1 --iters 3 --min-seconds 0
    ours --stock-ops --batch 32 --mode train --warmup 1 --iters 2 --min-seconds 0
    "$PY" scripts/reference/gcm_torch.py --threads "$THREADS" --size 64 2>/dev/null >>"$OUT"
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads $THREADS"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gcm-inspect commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "gcm-inspect ISA: $(grep -o '"isa":"[a-z0-9]*"' "$OUT" | head -1)"
"$PY" scripts/reference/summarise.py "$OUT"
