#!/usr/bin/env bash
# Response time of the review page over a large decision log (not a timed
# test).
#
# Writes a log of DECISIONS decisions: the daemon decides SEED synthetic
# frames with the demo model (evidence for every 10th), and those lines are
# repeated with new frame ids and capture times 33 ms apart up to DECISIONS
# (their evidence folders shared). Then starts `gcm-inspect review` on it
# and reports the time to its first answer (the whole log read), and the
# median and slowest of ROUNDS requests (curl's time_total) of: the newest
# gallery page (60 decisions), a deep gallery page, a filtered gallery page,
# one decision's detail, and the summary.
#
#   scripts/bench-review.sh                        # 100,000 decisions
#   DECISIONS=1000000 ROUNDS=10 scripts/bench-review.sh
#
# Environment: DECISIONS (100000), SEED (200), ROUNDS (20), BIN
# (target/release/gcm-inspect, built if missing), KEEP (set to keep the run
# folder). Needs: curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DECISIONS="${DECISIONS:-100000}"
SEED="${SEED:-200}"
ROUNDS="${ROUNDS:-20}"
BIN="${BIN:-target/release/gcm-inspect}"
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-review: needs $tool" >&2; exit 2; }
done
[ -x "$BIN" ] || cargo build --release
work="$(mktemp -d)"
server=""
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/seed.yaml" <<YAML
model: builtin:demo
source:
  synthetic:
    fps: 0
    size_px: 64
evidence:
  every_nth_frame: 10
output:
  log_dir: $work/seed-log
  evidence_dir: $work/evidence
metrics:
  listen: 127.0.0.1:0
YAML
"$BIN" run --config "$work/seed.yaml" --max-frames "$SEED" >/dev/null 2>"$work/seed.err" ||
  { cat "$work/seed.err" >&2; exit 1; }

mkdir -p "$work/log"
python3 - "$work/seed-log/decisions.jsonl" "$work/log/decisions.jsonl" "$DECISIONS" <<'PY'
import json, sys
seed = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[3])
t0 = seed[0]["captured_unix_us"]
with open(sys.argv[2], "w") as out:
    for i in range(n):
        line = dict(seed[i % len(seed)])
        line["frame"] = i
        line["captured_unix_us"] = t0 + i * 33_333
        out.write(json.dumps(line, separators=(",", ":")) + "\n")
PY

start_ns=$(date +%s%N)
"$BIN" review --log "$work/log" --labels "$work/labels" --bind 127.0.0.1:0 >"$work/review.out" 2>"$work/review.err" &
server=$!
addr=""
for _ in $(seq 600); do
  addr="$(sed -n 's|^review page: http://\([^/]*\)/.*|\1|p' "$work/review.out")"
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/review.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "bench-review: the page did not start" >&2; exit 1; }
curl -sf -o /dev/null "http://$addr/api/meta"
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))

class="$(python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["class"])' <"$work/log/decisions.jsonl")"
echo "bench-review: $DECISIONS decisions ($(du -h "$work/log/decisions.jsonl" | cut -f1) of log), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $BIN"
echo "started and read the log in ${ready_ms} ms"
measure() {
  local what="$1" path="$2"
  for _ in $(seq "$ROUNDS"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "http://$addr$path"
  done | sort -g | awk -v what="$what" '{ t[NR] = $1 * 1000 } END {
    printf "%-34s median %7.1f ms, slowest %7.1f ms (%d requests)\n", what, t[int((NR + 1) / 2)], t[NR], NR }'
}
measure "gallery, newest page (60)" "/api/decisions?page=0"
measure "gallery, page 1000" "/api/decisions?page=1000"
measure "gallery, filtered (class, margin)" "/api/decisions?class=$class&margin_max=0.5&status=unreviewed"
measure "detail, newest decision" "/api/decisions/$((DECISIONS - 1))"
measure "summary" "/api/summary"
