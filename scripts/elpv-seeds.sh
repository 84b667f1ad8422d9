#!/usr/bin/env bash
# The adopted ELPV binary recipe (docs/elpv.md: two steps, painted cracks then
# the real task) trained over seeds on a split, each run scored on its own
# validation cells and on the test split, with and without test-time symmetry
# averaging (--tta d4). One JSON line per run goes to RESULTS; runs already
# there are skipped, so an interrupted series continues where it stopped.
#
#   scripts/elpv-seeds.sh SPLIT [SEED...]     SPLIT: random | grouped; seeds default 0 1 2 3 4
#
# Environment: BIN (target/release/gcm-inspect, built if missing), PRETRAIN
# (config/elpv-pretrain.yaml) and FINETUNE (config/elpv-binary-pretrained.yaml),
# the two steps' training configs, WORK
# (data/elpv-seeds: the painted sets and models, git-ignored), RESULTS
# ($WORK/runs.jsonl). scripts/elpv-seeds-report.py RESULTS turns the lines into
# the table of docs/elpv.md (mean +- sd over seeds, operating points).
#
# Cost: one run is two trainings (20 + 40 epochs on about 3,600 and 5,300
# images at 64 x 64), about 30 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "elpv-seeds: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: scripts/elpv-seeds.sh random|grouped [SEED...]"
SPLIT="$1"; shift
case "$SPLIT" in
    random) MANIFEST=data/elpv/binary.csv ;;
    grouped) MANIFEST=data/elpv/binary-grouped.csv ;;
    *) die "split must be random or grouped, not '$SPLIT'" ;;
esac
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4)
[ -f "$MANIFEST" ] || die "$MANIFEST missing: run scripts/fetch-elpv.sh first"
BIN="${BIN:-target/release/gcm-inspect}"
[ -x "$BIN" ] || cargo build --release -q
WORK="${WORK:-data/elpv-seeds}"
RESULTS="${RESULTS:-$WORK/runs.jsonl}"
PRETRAIN="${PRETRAIN:-config/elpv-pretrain.yaml}"
FINETUNE="${FINETUNE:-config/elpv-binary-pretrained.yaml}"
mkdir -p "$WORK"
touch "$RESULTS"

for seed in "${SEEDS[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "seed '$seed' is not a number"
    if grep -q "\"split\": \"$SPLIT\", \"seed\": $seed," "$RESULTS"; then
        echo "elpv-seeds: $SPLIT seed $seed already in $RESULTS, skipped" >&2
        continue
    fi
    R="$WORK/$SPLIT-s$seed"
    echo "elpv-seeds: $SPLIT seed $seed -> $R ($(date +%T))" >&2
    start=$(date +%s)
    [ -f "$R/painted/joint.csv" ] ||
        "$BIN" paint-cracks --data "$MANIFEST" --out "$R/painted" --seed "$seed" >&2
    [ -f "$R/pre/model.json" ] ||
        "$BIN" train --data "$R/painted/pretrain.csv" --config "$PRETRAIN" \
            --out "$R/pre" --seed "$seed" >&2
    [ -f "$R/model/model.json" ] ||
        "$BIN" train --init "$R/pre" --data "$R/painted/joint.csv" \
            --config "$FINETUNE" --out "$R/model" --seed "$seed" >&2
    trained=$(( $(date +%s) - start ))
    for tta in none d4; do
        "$BIN" eval --model "$R/model" --data "$R/model/validation.csv" --resize --tta "$tta" \
            --sweep --reject-classes defect --out "$R/val-$tta" >/dev/null
        "$BIN" eval --model "$R/model" --data "$MANIFEST" --split test --resize --tta "$tta" \
            --sweep --reject-classes defect --out "$R/test-$tta" >/dev/null
    done
    python3 scripts/elpv-seeds-report.py --run "$R" --split "$SPLIT" --seed "$seed" \
        --train-seconds "$trained" >>"$RESULTS"
    tail -n 1 "$RESULTS" >&2
done
