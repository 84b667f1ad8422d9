#!/usr/bin/env bash
# Sustained-throughput benchmark of the inspection daemon (not a timed test).
#
# Runs `gcm-inspect run` on the synthetic source at FPS frames per second for
# DURATION_S seconds, pinned to CPUS, with the default evidence policy and
# checks (check (a) on every frame, check (b) every 100th, evidence for
# divergent and every 300th frame, log fsync every 30 lines / 1 s), and reports:
# sustained decisions per second, frames dropped, p50/p99 capture-to-decision
# latency (from the decision log) and peak RSS.
#
#   scripts/bench-daemon.sh                      # demo model, 30 fps, 300 s, CPUs 0,1
#   FPS=60 DURATION_S=120 scripts/bench-daemon.sh
#   MODEL=/path/to/model scripts/bench-daemon.sh
#   MODEL=table3-untrained scripts/bench-daemon.sh   # Table-3 64x64 model, random weights
#
# Environment: FPS (30), DURATION_S (300), CPUS (0,1: taskset list), MODEL
# (builtin:demo), DEVICE (cpu), BIN (target/release/gcm-inspect, built if
# missing), KEEP (set to keep the run folder). Needs: taskset, GNU time, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
FPS="${FPS:-30}"
DURATION_S="${DURATION_S:-300}"
CPUS="${CPUS:-0,1}"
MODEL="${MODEL:-builtin:demo}"
DEVICE="${DEVICE:-cpu}"
BIN="${BIN:-target/release/gcm-inspect}"
for tool in taskset jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-daemon: needs $tool" >&2; exit 2; }
done
[ -x "$BIN" ] || cargo build --release
work="$(mktemp -d)"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

if [ "$MODEL" = table3-untrained ]; then
  MODEL="$work/model"
  GCM_BENCH_MODEL_OUT="$MODEL" cargo test --quiet --test tests -- \
    --ignored --exact daemon::write_untrained_table3_model >/dev/null
fi

cat >"$work/bench.yaml" <<YAML
model: $MODEL
device: $DEVICE
source:
  synthetic:
    fps: $FPS
    size_px: 64
evidence:
  every_nth_frame: 300
output:
  log_dir: $work/log
  evidence_dir: $work/evidence
metrics:
  listen: 127.0.0.1:0
YAML
"$BIN" check-config "$work/bench.yaml" >/dev/null

frames=$((FPS * DURATION_S))
echo "bench-daemon: $frames frames at $FPS fps on CPUs $CPUS, model $MODEL ($(nproc) CPUs online)" >&2
/usr/bin/time -f '%M' -o "$work/rss_kb" \
  taskset -c "$CPUS" "$BIN" run --config "$work/bench.yaml" --max-frames "$frames" \
  >"$work/summary.json" 2>"$work/stderr.txt" || {
  echo "bench-daemon: the daemon failed:" >&2
  tail -n 20 "$work/stderr.txt" >&2
  exit 1
}

log="$work/log/decisions.jsonl"
decisions=$(wc -l <"$log")
jq -r '.latency.capture_to_decision_ms' "$log" | sort -g >"$work/lat"
pct() { awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.1f", a[i]}' "$work/lat"; }
span_s=$(jq -s '(.[-1].captured_unix_us - .[0].captured_unix_us) / 1e6' "$log")
fps_sustained=$(awk -v n="$decisions" -v s="$span_s" 'BEGIN {printf "%.2f", (n-1)/s}')
dropped=$(jq .frames_dropped "$work/summary.json")
captured=$(jq .frames_captured "$work/summary.json")
divergent=$(jq .divergences "$work/summary.json")
rss_mib=$(awk '{printf "%.0f", $1/1024}' "$work/rss_kb")
p50=$(pct 50)
p99=$(pct 99)
max=$(tail -n 1 "$work/lat")

cat <<EOF_REPORT
| date | model | source fps | frames | sustained decisions/s | dropped | p50 ms | p99 ms | max ms | peak RSS MiB | divergent |
|---|---|---|---|---|---|---|---|---|---|---|
| $(date -u +%F) | $MODEL | $FPS | $captured | $fps_sustained | $dropped | $p50 | $p99 | $max | $rss_mib | $divergent |
EOF_REPORT
