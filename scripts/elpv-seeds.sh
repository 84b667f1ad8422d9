#!/usr/bin/env bash
# The adopted ELPV binary recipe (docs/elpv.md: two steps, painted cracks then
# the real task) trained over seeds on a split, each run scored on its own
# validation cells and on the test split, without and with test-time symmetry
# averaging (--tta flips, --tta d4). One JSON line per run goes to RESULTS;
# runs already there are skipped, so an interrupted series continues where it
# stopped, and a run scored in fewer modes is scored in the missing ones.
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
# images at 64 x 64), about 30 minutes on 2 idle cores. Training gives the
# same figures with any thread count, and one thread per run uses the cores
# better: two series side by side with RAYON_NUM_THREADS=1 each train 149
# images/s together against 116 for one series on both cores.
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
TTAS=(none flips d4)
mkdir -p "$WORK"
touch "$RESULTS"

# step DIR COMMAND...: runs COMMAND unless DIR holds its .done marker. A step
# counts as done only by its marker: an interrupted training leaves the best
# model so far, which must not pass for a finished one, so DIR starts empty.
step() {
    local dir="$1"; shift
    [ -f "$dir/.done" ] && return
    rm -rf "$dir"
    "$@" >&2
    touch "$dir/.done"
}

for seed in "${SEEDS[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "seed '$seed' is not a number"
    line=$(grep "\"split\": \"$SPLIT\", \"seed\": $seed," "$RESULTS" || true)
    scored=1
    for tta in "${TTAS[@]}"; do
        [[ "$line" == *"\"$tta\": {"* ]] || scored=0
    done
    if [ "$scored" = 1 ]; then
        echo "elpv-seeds: $SPLIT seed $seed already in $RESULTS, skipped" >&2
        continue
    fi
    R="$WORK/$SPLIT-s$seed"
    echo "elpv-seeds: $SPLIT seed $seed -> $R ($(date +%T))" >&2
    start=$(date +%s)
    # Training time is measured only when this invocation trains; a run
    # trained earlier keeps the figure of its line.
    trained=()
    [ -f "$R/model/.done" ] || trained=(--train-seconds)
    step "$R/painted" "$BIN" paint-cracks --data "$MANIFEST" --out "$R/painted" --seed "$seed"
    step "$R/pre" "$BIN" train --data "$R/painted/pretrain.csv" --config "$PRETRAIN" \
        --out "$R/pre" --seed "$seed"
    step "$R/model" "$BIN" train --init "$R/pre" --data "$R/painted/joint.csv" \
        --config "$FINETUNE" --out "$R/model" --seed "$seed"
    [ ${#trained[@]} = 0 ] || trained+=("$(( $(date +%s) - start ))")
    for tta in "${TTAS[@]}"; do
        [ -f "$R/val-$tta/predictions.csv" ] ||
            "$BIN" eval --model "$R/model" --data "$R/model/validation.csv" --resize \
                --tta "$tta" --sweep --reject-classes defect --out "$R/val-$tta" >/dev/null
        [ -f "$R/test-$tta/predictions.csv" ] ||
            "$BIN" eval --model "$R/model" --data "$MANIFEST" --split test --resize \
                --tta "$tta" --sweep --reject-classes defect --out "$R/test-$tta" >/dev/null
    done
    python3 scripts/elpv-seeds-report.py --run "$R" --split "$SPLIT" --seed "$seed" \
        "${trained[@]}" --results "$RESULTS"
    grep "\"split\": \"$SPLIT\", \"seed\": $seed," "$RESULTS" >&2
done
