#!/usr/bin/env bash
# CPU time per image of each evidence method (CAM, Grad-CAM, Guided
# Backprop, Guided Grad-CAM, CAV) on the Table 6 baseline CNN, and of the
# GCM's forward and forward + CCM on the Table 3 network as the reference,
# at batch 1 and 32, ROUNDS times interleaved, in one run (see
# BENCHMARKS.md). Each method's time includes the forward that decides the
# class it maps; Grad-CAM, Guided Backprop and CAV run candle's autograd
# over the engine's convolution backward.
#
#   scripts/bench-methods.sh [THREADS] [ROUNDS] [SIZE] [CHANNELS] [CLASSES]
#
# BIN=path/to/gcm-inspect skips the release build and times that binary.
#
# Defaults: the paper's CIFAR-shaped networks, 32 x 32 RGB, 10 classes,
# random weights (timings do not depend on the trained weights).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
ROUNDS=${2:-3}
SIZE=${3:-32}
CHANNELS=${4:-3}
CLASSES=${5:-c0,c1,c2,c3,c4,c5,c6,c7,c8,c9}
if [ -z "${BIN:-}" ]; then
    cargo build --release -q
    BIN=${CARGO_TARGET_DIR:-target}/release/gcm-inspect
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
init() { "$BIN" bench --model "$WORK/$1" --init --arch "$1" --size "$SIZE" --channels "$CHANNELS" \
    --classes "$CLASSES" --warmup 0 --iters 1 --min-seconds 0 >/dev/null; }
init cnn
init gcm
OUT=$WORK/results.jsonl
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
one() { # MODEL BATCH [--method M]
    local model=$1 batch=$2
    shift 2
    local iters=20 warm=3
    [ "$batch" -gt 1 ] && iters=4 warm=1
    "$BIN" bench --model "$WORK/$model" --threads "$THREADS" --batch "$batch" --json \
        --warmup "$warm" --iters "$iters" --min-seconds 1 "$@" >>"$OUT"
}
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    for batch in 1 32; do
        one gcm "$batch"
        one gcm "$batch" --method gcm
        one cnn "$batch"
        for m in cam gradcam guided-backprop guided-gradcam cav; do
            one cnn "$batch" --method "$m"
        done
    done
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads $THREADS"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gcm-inspect commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "input: ${CHANNELS}x${SIZE}x${SIZE}, classes: $CLASSES; median of $ROUNDS rounds, ms per image (p50 latency / batch)"
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    what = r.get("method") or "forward"
    key = (r["arch"], what)
    rows.setdefault(key, {}).setdefault(r["batch"], []).append(r["latency_ms"]["p50"] / r["batch"])
ref = {b: statistics.median(v) for b, v in rows[("gcm", "forward")].items()}
print("| model | timed | batch 1 ms/image | x GCM forward | batch 32 ms/image | x GCM forward |")
print("|---|---|---|---|---|---|")
for (arch, what), by in rows.items():
    cells = []
    for b in (1, 32):
        m = statistics.median(by[b])
        cells += [f"{m:.3f}", f"{m / ref[b]:.2f}"]
    print(f"| {arch} | {what} | " + " | ".join(cells) + " |")
PY
