#!/usr/bin/env bash
# CPU speed of one trained ELPV model: gcm-inspect vs PyTorch eager vs ONNX
# Runtime, the same model, input size and thread count, measured in the same
# run, ROUNDS times interleaved; prints medians and ratios (BENCHMARKS.md, ELPV).
#
#   scripts/bench-elpv.sh MODEL_DIR [THREADS] [ROUNDS]
#
# Inference images/s at batch 1 and 32 (gcm-inspect bench: folded BatchNorm,
# the daemon's path; PyTorch eval mode; ONNX Runtime on the twin's export),
# one training step at batch 32 (forward, cross-entropy, backward, SGD), and,
# with EPOCHS=1, one real training epoch on data/elpv/binary.csv each
# (gcm-inspect train vs scripts/reference/train_twin.py, the model's own
# training config; validation included).
#
# Environment: BIN (target/release/gcm-inspect, built if missing), EPOCHS
# (0: skip the epoch timing), MANIFEST (data/elpv/binary.csv), KEEP (keep the
# raw JSON lines in this file). Needs the `bench` subcommand (the CPU engine).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "bench-elpv: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: scripts/bench-elpv.sh MODEL_DIR [THREADS] [ROUNDS]"
MODEL="$1"
CORES="$(nproc --all)"
THREADS="${2:-$CORES}"
ROUNDS="${3:-3}"
BIN="${BIN:-target/release/gcm-inspect}"
EPOCHS="${EPOCHS:-0}"
MANIFEST="${MANIFEST:-data/elpv/binary.csv}"
[ -f "$MODEL/model.json" ] || die "$MODEL is not a model directory (no model.json)"
[ -x "$BIN" ] || cargo build --release -q
"$BIN" bench --help >/dev/null 2>&1 || die "$BIN has no 'bench' subcommand (it comes with the CPU engine)"
VENV="$(scripts/reference/setup-venv.sh)"
PY="$VENV/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
OUT="$WORK/results.jsonl"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

ours() { "$BIN" bench --model "$MODEL" --threads "$THREADS" --json "$@" >>"$OUT"; }
for round in $(seq "$ROUNDS"); do
    echo "bench-elpv: round $round/$ROUNDS" >&2
    ours --batch 1 --warmup 5 --iters 30 --min-seconds 2
    ours --batch 32 --warmup 2 --iters 5 --min-seconds 2
    ours --batch 32 --mode train --warmup 1 --iters 3 --min-seconds 2
    "$PY" scripts/reference/bench_twin.py --model "$MODEL" --threads "$THREADS" \
        --warmup 3 --iters 10 --min-seconds 2 2>/dev/null >>"$OUT"
done

if [ "$EPOCHS" != 0 ]; then
    [ -f "$MANIFEST" ] || die "$MANIFEST missing: run scripts/fetch-elpv.sh first"
    CFG="$WORK/train.yaml"
    # The model's own training config (the card's `training`), one epoch.
    "$PY" - "$MODEL/model.json" "$CFG" <<'PY'
import json, sys, yaml
card = json.load(open(sys.argv[1]))
t = dict(card["training"] or {})
t["epochs"] = 1
m = card["model"]
t["model"] = {k: m[k] for k in ("input_rows", "input_cols", "encoder_widths", "encoder_depths",
                                 "decoder_convs_per_stage", "head_kernel", "shared_decoder", "clipped")}
t["model"]["scaling"] = m["scaling"]["kind"]
yaml.safe_dump(t, open(sys.argv[2], "w"))
PY
    for round in $(seq "$EPOCHS"); do
        s=$(date +%s.%N)
        "$BIN" train --data "$MANIFEST" --config "$CFG" --out "$WORK/ours" --no-progress >/dev/null 2>&1
        e=$(date +%s.%N)
        echo "{\"runtime\": \"gcm-inspect\", \"epoch_seconds\": $(echo "$e - $s" | bc)}" >>"$OUT"
        s=$(date +%s.%N)
        "$PY" scripts/reference/train_twin.py --data "$MANIFEST" --config "$CFG" --out "$WORK/twin" \
            --threads "$THREADS" >/dev/null 2>&1
        e=$(date +%s.%N)
        echo "{\"runtime\": \"pytorch-eager\", \"epoch_seconds\": $(echo "$e - $s" | bc)}" >>"$OUT"
    done
fi

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $CORES cores, threads $THREADS"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gcm-inspect: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), model $MODEL ($(grep -m1 -o '"weights_sha256": *"[0-9a-f]\{12\}' "$MODEL/model.json" | grep -o '[0-9a-f]\{12\}$'))"
[ -z "${KEEP:-}" ] || cp "$OUT" "$KEEP"
"$PY" scripts/reference/summarise_bench.py "$OUT"
