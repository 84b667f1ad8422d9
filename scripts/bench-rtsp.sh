#!/usr/bin/env bash
# Capture-to-decision latency of the inspection daemon on an RTSP camera
# (not a timed test).
#
# Serves IMAGES synthetic 64x64 EL cells in a loop at FPS frames per second
# from a real RTSP server on 127.0.0.1 (gst-rtsp-server, run by the test
# binary's `camera::rtsp_server` helper; CODEC jpeg: quality 95, or h264:
# x264 zero latency), runs `gcm-inspect run` on it through the `gstreamer`
# source (`rtsp` preset, jitter buffer LATENCY_MS) for DURATION_S seconds
# pinned to CPUS, with the default evidence policy and checks, and reports
# decisions/s, frames dropped and p50/p99 of:
#   capture_to_decision_ms  from the frame's buffer timestamp (its arrival at
#                           the jitter buffer; depayloading and decoding
#                           follow) to the decision;
#   daemon_ms               from the hand-over by the appsink to the decision
#                           (queue + preprocess + infer), as for the synthetic
#                           source in scripts/bench-daemon.sh.
#
#   scripts/bench-rtsp.sh                          # demo model, 30 fps, 60 s, MJPEG, 100 ms jitter buffer
#   CODEC=h264 LATENCY_MS=0 scripts/bench-rtsp.sh
#
# Environment: FPS (30), DURATION_S (60), CODEC (jpeg), LATENCY_MS (100),
# IMAGES (16), CPUS (0,1: taskset list, the daemon only), MODEL
# (builtin:demo), BIN (target/release/gcm-inspect, built if missing),
# TEST_BIN (the integration-test binary that serves; default: run through
# `cargo test`), KEEP (set to keep the run folder). Needs: taskset, jq, GStreamer (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
FPS="${FPS:-30}"
DURATION_S="${DURATION_S:-60}"
CODEC="${CODEC:-jpeg}"
LATENCY_MS="${LATENCY_MS:-100}"
IMAGES="${IMAGES:-16}"
CPUS="${CPUS:-0,1}"
MODEL="${MODEL:-builtin:demo}"
BIN="${BIN:-target/release/gcm-inspect}"
for tool in taskset jq; do
  command -v "$tool" >/dev/null || { echo "bench-rtsp: needs $tool" >&2; exit 2; }
done
[ -x "$BIN" ] || cargo build --release
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

"$BIN" synth --out "$work/synth" --count "$IMAGES" --size 64 >/dev/null
mkdir -p "$work/cells"
i=0
while read -r f; do
  cp "$f" "$work/cells/$(printf 'cell_%03d.png' "$i")"
  i=$((i + 1))
done < <(find "$work/synth" -name '*.png' | sort)

# The server: the test binary's helper.
serve=(--ignored --exact camera::rtsp_server --nocapture)
if [ -n "${TEST_BIN:-}" ]; then
  GCM_TEST_RTSP_SERVE="$work/cells;$IMAGES;0;$FPS;$CODEC;" "$TEST_BIN" "${serve[@]}" \
    >"$work/server.txt" 2>&1 &
else
  GCM_TEST_RTSP_SERVE="$work/cells;$IMAGES;0;$FPS;$CODEC;" cargo test --quiet --test tests -- "${serve[@]}" \
    >"$work/server.txt" 2>&1 &
fi
server_pid=$!
for _ in $(seq 1 600); do
  grep -q '^rtsp-ready ' "$work/server.txt" && break
  kill -0 "$server_pid" 2>/dev/null || { echo "bench-rtsp: the server failed:" >&2; cat "$work/server.txt" >&2; exit 1; }
  sleep 1
done
port=$(sed -n 's/^rtsp-ready //p' "$work/server.txt")
[ -n "$port" ] || { echo "bench-rtsp: the server did not start" >&2; exit 1; }

cat >"$work/bench.yaml" <<YAML
model: $MODEL
source:
  gstreamer:
    rtsp:
      url: rtsp://127.0.0.1:$port/cells
      latency_ms: $LATENCY_MS
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
echo "bench-rtsp: $frames frames at $FPS fps, $CODEC, jitter buffer $LATENCY_MS ms, daemon on CPUs $CPUS, model $MODEL ($(nproc) CPUs online)" >&2
taskset -c "$CPUS" "$BIN" run --config "$work/bench.yaml" --max-frames "$frames" \
  >"$work/summary.json" 2>"$work/stderr.txt" || {
  echo "bench-rtsp: the daemon failed:" >&2
  tail -n 20 "$work/stderr.txt" >&2
  exit 1
}

log="$work/log/decisions.jsonl"
decisions=$(wc -l <"$log")
pct() { sort -g "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.1f", a[i]}'; }
jq -r '.latency.capture_to_decision_ms' "$log" >"$work/c2d"
jq -r '.latency | .queue_ms + .preprocess_ms + .infer_ms' "$log" >"$work/daemon"
span_s=$(jq -s '(.[-1].captured_unix_us - .[0].captured_unix_us) / 1e6' "$log")
rate=$(awk -v n="$decisions" -v s="$span_s" 'BEGIN {printf "%.2f", (n-1)/s}')
dropped=$(jq .frames_dropped "$work/summary.json")
captured=$(jq .frames_captured "$work/summary.json")

cat <<EOF_REPORT
| date | model | codec | jitter buffer ms | source fps | frames | decisions/s | dropped | capture-to-decision p50 / p99 ms | daemon p50 / p99 ms |
|---|---|---|---|---|---|---|---|---|---|
| $(date -u +%F) | $MODEL | $CODEC | $LATENCY_MS | $FPS | $captured | $rate | $dropped | $(pct "$work/c2d" 50) / $(pct "$work/c2d" 99) | $(pct "$work/daemon" 50) / $(pct "$work/daemon" 99) |
EOF_REPORT
