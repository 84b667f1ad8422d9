#!/usr/bin/env bash
# Two gcm-inspect binaries on the same `bench` arguments, ROUNDS times
# interleaved (A B A B ...), so machine noise falls on both alike; prints each
# binary's images/s per round, the medians and B / A (BENCHMARKS.md).
#
#   scripts/bench-ab.sh BIN_A BIN_B ROUNDS BENCH_ARGS...
#   scripts/bench-ab.sh old/gcm-inspect target/release/gcm-inspect 5 \
#       --model data/models/elpv-binary --mode train --batch 32 --threads 2 --warmup 1 --iters 5
#
# With PERF=1 each run is wrapped in `perf stat -e page-faults,task-clock`
# and the medians of both counters are printed too.
set -euo pipefail
die() { echo "bench-ab: $*" >&2; exit 1; }
[ $# -ge 4 ] || die "usage: scripts/bench-ab.sh BIN_A BIN_B ROUNDS BENCH_ARGS..."
A="$1"; B="$2"; ROUNDS="$3"; shift 3
for bin in "$A" "$B"; do [ -x "$bin" ] || die "$bin is not an executable"; done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
PERF="${PERF:-0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
one() { # bin tag round BENCH_ARGS...
    local wrap=()
    [ "$PERF" = 1 ] && wrap=(perf stat -x, -o "$WORK/$2.$3.perf" -e page-faults,task-clock)
    "${wrap[@]}" "$1" bench --json "${@:4}" >"$WORK/$2.$3.json" || die "$1 bench ${*:4} failed"
}
for r in $(seq 1 "$ROUNDS"); do
    echo "bench-ab: round $r/$ROUNDS" >&2
    one "$A" a "$r" "$@"
    one "$B" b "$r" "$@"
done
python3 - "$WORK" "$ROUNDS" "$A" "$B" "$PERF" <<'PY'
import json, statistics, sys
work, rounds, a, b, perf = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
def load(tag, r):
    with open(f"{work}/{tag}.{r}.json") as f:
        v = json.load(f)
    out = {"ips": v["images_per_second"]}
    if perf:
        for line in open(f"{work}/{tag}.{r}.perf"):
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2] in ("page-faults", "task-clock"):
                out[parts[2]] = float(parts[0])
    return out
runs = {t: [load(t, r) for r in range(1, rounds + 1)] for t in "ab"}
for t, name in (("a", a), ("b", b)):
    print(f"{t.upper()} {name}: images/s " + " ".join(f"{x['ips']:.1f}" for x in runs[t]))
med = {t: {k: statistics.median(x[k] for x in runs[t]) for k in runs[t][0]} for t in "ab"}
print(f"median images/s: A {med['a']['ips']:.1f}, B {med['b']['ips']:.1f}, B / A {med['b']['ips'] / med['a']['ips']:.2f}x")
if perf:
    for k, unit in (("page-faults", ""), ("task-clock", " ms CPU")):
        print(f"median {k}: A {med['a'][k]:.0f}{unit}, B {med['b'][k]:.0f}{unit}, B / A {med['b'][k] / med['a'][k]:.2f}")
PY
