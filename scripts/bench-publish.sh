#!/usr/bin/env bash
# Decisions to the line: capture-to-publish latency with a real local MQTT
# broker, and inference throughput with that broker up, down, or no output
# at all (not a timed test).
#
# 1. Latency: `gcm-inspect run` on the synthetic source at FPS for
#    DURATION_S, publishing every decision (QoS 1) to mosquitto on
#    127.0.0.1; mosquitto_sub, on the same machine, stamps each message on
#    arrival (%U). Capture-to-publish = arrival - the payload's
#    captured_unix_us: capture, queue, preprocessing, network, verdict,
#    the output's queue and thread, the broker, the subscriber. Reported:
#    p50 / p99 / max, with the daemon's capture-to-decision from its log.
# 2. Throughput: FRAMES frames as fast as the model goes (unpaced), three
#    ways interleaved ROUNDS times: no output, the broker up, the broker
#    down (the URL's port closed). Reported: median decisions/s of each and
#    their ratios to "no output".
#
#   scripts/bench-publish.sh                         # demo model, 30 fps, 60 s; 3 x 2000 frames
#   FPS=30 DURATION_S=120 FRAMES=4000 ROUNDS=5 scripts/bench-publish.sh
#
# Environment: FPS (30), DURATION_S (60), FRAMES (2000), ROUNDS (3), CPUS
# (0,1: taskset list for the daemon), MODEL (builtin:demo), BIN
# (target/release/gcm-inspect, built if missing), KEEP (keep the work
# folder). Needs: mosquitto, mosquitto_sub, taskset, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
FPS="${FPS:-30}"
DURATION_S="${DURATION_S:-60}"
FRAMES="${FRAMES:-2000}"
ROUNDS="${ROUNDS:-3}"
CPUS="${CPUS:-0,1}"
MODEL="${MODEL:-builtin:demo}"
BIN="${BIN:-target/release/gcm-inspect}"
die() { echo "bench-publish: $*" >&2; exit 1; }
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[ -x "$MOSQUITTO" ] || die "needs mosquitto (scripts/install-deps.sh)"
for tool in mosquitto_sub taskset jq; do
  command -v "$tool" >/dev/null || die "needs $tool"
done
[ -x "$BIN" ] || cargo build --release
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
closed=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

# config NAME FPS OUTPUT_PORT(or empty): a daemon config in $work/NAME.
config() {
  local dir="$work/$1"
  mkdir -p "$dir"
  cat >"$dir/c.yaml" <<YAML
model: $MODEL
station: bench
source:
  synthetic:
    fps: $2
    size_px: 64
evidence:
  every_nth_frame: 300
output:
  log_dir: $dir/log
  evidence_dir: $dir/evidence
metrics:
  enabled: false
YAML
  if [ -n "$3" ]; then
    printf 'outputs:\n  - mqtt: {url: "mqtt://127.0.0.1:%s", qos: 1, reconnect_max_ms: 1000}\n' "$3" >>"$dir/c.yaml"
  fi
  echo "$dir"
}

pct() { awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.1f", a[i]}' "$2"; }

# ---- 1. latency at FPS with the broker up
dir=$(config latency "$FPS" "$port")
mosquitto_sub -p "$port" -h 127.0.0.1 -q 1 -t 'gcm/#' -F '%U %p' >"$work/arrivals" &
sub=$!
pids+=($sub)
sleep 0.5
frames=$((FPS * DURATION_S))
echo "bench-publish: latency, $frames frames at $FPS fps on CPUs $CPUS, model $MODEL ($(nproc) CPUs online)" >&2
taskset -c "$CPUS" "$BIN" run --config "$dir/c.yaml" --max-frames "$frames" >"$dir/summary.json" 2>"$dir/stderr.txt" ||
  { tail -n 20 "$dir/stderr.txt" >&2; die "the daemon failed"; }
sleep 1
kill "$sub" 2>/dev/null || true
# arrival (s) and the payload's capture time (us): milliseconds between.
python3 - "$work/arrivals" >"$work/publish_ms" <<'PY'
import json, sys
ms = []
for line in open(sys.argv[1]):
    t, payload = line.split(" ", 1)
    ms.append((float(t) - json.loads(payload)["captured_unix_us"] / 1e6) * 1e3)
for v in sorted(ms):
    print(f"{v:.3f}")
PY
jq -r '.latency.capture_to_decision_ms' "$dir/log/decisions.jsonl" | sort -g >"$work/decide_ms"
received=$(wc -l <"$work/publish_ms")
decided=$(wc -l <"$work/decide_ms")
sent=$(jq '.outputs.mqtt.sent' "$dir/summary.json")
dropped=$(jq '.outputs.mqtt.dropped' "$dir/summary.json")

# ---- 2. throughput: no output / broker up / broker down, interleaved
declare -A rates
for r in $(seq 1 "$ROUNDS"); do
  for way in none up down; do
    case $way in none) p="" ;; up) p=$port ;; down) p=$closed ;; esac
    dir=$(config "tp-$way-$r" 0 "$p")
    echo "bench-publish: throughput round $r/$ROUNDS, $way" >&2
    taskset -c "$CPUS" "$BIN" run --config "$dir/c.yaml" --max-frames "$FRAMES" >"$dir/summary.json" 2>"$dir/stderr.txt" ||
      { tail -n 20 "$dir/stderr.txt" >&2; die "the daemon failed ($way)"; }
    rate=$(jq -s '(length - 1) / ((.[-1].captured_unix_us - .[0].captured_unix_us) / 1e6) * 10 | round / 10' "$dir/log/decisions.jsonl")
    rates[$way]+="$rate "
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
none=$(median "${rates[none]}")
up=$(median "${rates[up]}")
down=$(median "${rates[down]}")

cat <<EOF_REPORT
| date | model | fps | decisions | received | sent / dropped | publish p50 ms | p99 ms | max ms | decision p50 ms | p99 ms |
|---|---|---|---|---|---|---|---|---|---|---|
| $(date -u +%F) | $MODEL | $FPS | $decided | $received | $sent / $dropped | $(pct 50 "$work/publish_ms") | $(pct 99 "$work/publish_ms") | $(tail -n 1 "$work/publish_ms") | $(pct 50 "$work/decide_ms") | $(pct 99 "$work/decide_ms") |

| unpaced, $FRAMES frames, median of $ROUNDS | decisions/s | vs no output |
|---|---|---|
| no output | $none | 1.00 |
| broker up | $up | $(awk -v a="$up" -v b="$none" 'BEGIN {printf "%.2f", a/b}') |
| broker down | $down | $(awk -v a="$down" -v b="$none" 'BEGIN {printf "%.2f", a/b}') |
EOF_REPORT
