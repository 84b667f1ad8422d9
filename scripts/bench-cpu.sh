#!/usr/bin/env bash
# CPU benchmark of the Table 3 GCM (1 grey channel, 2 classes, 64x64):
# gcm-inspect's engine, candle's stock ops, PyTorch eager and ONNX Runtime,
# measured in the same run with the same thread count, ROUNDS times
# interleaved; prints medians and ratios (see BENCHMARKS.md).
#
#   scripts/bench-cpu.sh [THREADS] [ROUNDS]
#
# PyTorch and ONNX Runtime run the PyTorch twin (scripts/reference/gcm_twin.py)
# loaded from the same randomly initialised model directory gcm-inspect
# times, via scripts/reference/bench_twin.py; the venv (.venv-ref/, from
# PyPI) is made by scripts/reference/setup-venv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
ROUNDS=${2:-3}
VENV=$(scripts/reference/setup-venv.sh)
PY=$VENV/bin/python
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
    "$PY" scripts/reference/bench_twin.py --model "$MODEL" --threads "$THREADS" \
        --warmup 5 --iters 20 --min-seconds 2 2>/dev/null >>"$OUT"
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads $THREADS"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gcm-inspect commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "gcm-inspect ISA: $(grep -o '"isa":"[a-z0-9]*"' "$OUT" | head -1)"
"$PY" scripts/reference/summarise_bench.py "$OUT"
