#!/usr/bin/env bash
# Soak benchmark of the inspection daemon (not in CI): does anything grow
# that should not? Runs `gcm-inspect run` on the synthetic source for
# DURATION_S seconds at FPS frames per second with evidence kept for every
# EVIDENCE_EVERY-th frame under a small evidence quota and a small log
# retention (so both deletion paths run many times), and samples every
# SAMPLE_S seconds into OUT/samples.csv:
#   t_s, rss_kib, open_fds, log_bytes, evidence_bytes (allocated, as du counts),
#   decisions (gcm_decisions_total, all classes), latency_mean_ms and latency_p99_ms over
#   the interval (from /metrics' gcm_capture_to_decision_seconds histogram:
#   the sum/count and the bucket counts that grew since the last sample;
#   p99 is that bucket's upper bound).
# Then prints, for each column, first/last/min/max and the least-squares
# slope per hour over the whole run and over its second half (past the
# warm-up and the first quota cycles: the steady state), to OUT/report.md.
#
#   scripts/soak.sh                 # 1 hour, OUT=/tmp/gcm-soak-<time>
#   scripts/soak.sh 180 /tmp/soak   # 3 minutes, into /tmp/soak
#   nice scripts/soak.sh 3600 /tmp/soak-1h &
#
# Environment: DURATION_S (3600; or the first argument), OUT (second
# argument), FPS (30), EVIDENCE_EVERY (10), EVIDENCE_QUOTA (16777216),
# LOG_ROTATE (4194304), LOG_KEEP (16777216), SAMPLE_S (10), PORT (19464,
# the metrics port, loopback), BIN (target/release/gcm-inspect, built if
# missing). Needs curl and awk.
set -euo pipefail
trap 'echo "soak: failed at line $LINENO" >&2' ERR
cd "$(dirname "$0")/.."
DURATION_S="${1:-${DURATION_S:-3600}}"
OUT="${2:-${OUT:-/tmp/gcm-soak-$(date -u +%Y%m%dT%H%M%S)}}"
FPS="${FPS:-30}"
EVIDENCE_EVERY="${EVIDENCE_EVERY:-10}"
EVIDENCE_QUOTA="${EVIDENCE_QUOTA:-16777216}"
LOG_ROTATE="${LOG_ROTATE:-4194304}"
LOG_KEEP="${LOG_KEEP:-16777216}"
SAMPLE_S="${SAMPLE_S:-10}"
PORT="${PORT:-19464}"
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/gcm-inspect}"
for tool in curl awk du; do
    command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 69; }
done
[ -x "$BIN" ] || cargo build --locked --release --bin gcm-inspect
mkdir -p "$OUT"
rm -rf "$OUT/log" "$OUT/evidence"

cat >"$OUT/soak.yaml" <<YAML
model: builtin:demo
device: cpu
source:
  synthetic:
    fps: $FPS
    size_px: 64
evidence:
  every_nth_frame: $EVIDENCE_EVERY
  quota_bytes: $EVIDENCE_QUOTA
output:
  log_dir: $OUT/log
  evidence_dir: $OUT/evidence
  log:
    rotate_bytes: $LOG_ROTATE
    keep_bytes: $LOG_KEEP
decision:
  reject_classes: [crack, inactive, spot]
metrics:
  listen: 127.0.0.1:$PORT
YAML
"$BIN" check-config "$OUT/soak.yaml" >/dev/null

echo "soak: $DURATION_S s at $FPS fps, evidence every ${EVIDENCE_EVERY}th frame (quota $EVIDENCE_QUOTA B), log rotate $LOG_ROTATE B keep $LOG_KEEP B, sample every $SAMPLE_S s -> $OUT" >&2
"$BIN" run --config "$OUT/soak.yaml" >"$OUT/summary.json" 2>"$OUT/stderr.txt" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT

metrics() { curl -fsS --max-time 5 "http://127.0.0.1:$PORT/metrics" 2>/dev/null || true; }
# Up to 60 s for the metrics endpoint.
for _ in $(seq 120); do
    metrics | grep -q '^gcm_decisions_total' && break
    kill -0 "$pid" 2>/dev/null || { echo "soak: the daemon stopped:" >&2; tail -n 20 "$OUT/stderr.txt" >&2; exit 1; }
    sleep 0.5
done

echo "t_s,rss_kib,open_fds,log_bytes,evidence_bytes,decisions,latency_mean_ms,latency_p99_ms" >"$OUT/samples.csv"
start=$(date +%s.%N)
prev="$OUT/.prev"
: >"$prev"
next=0
while :; do
    now=$(date +%s.%N)
    t=$(awk -v a="$start" -v b="$now" 'BEGIN {printf "%.1f", b - a}')
    kill -0 "$pid" 2>/dev/null || { echo "soak: the daemon stopped at t=$t s:" >&2; tail -n 20 "$OUT/stderr.txt" >&2; exit 1; }
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    # du exits 1 when the daemon deletes a file under it mid-walk (the
    # quota at work); its total is still the folder's.
    logb=$({ du -s -B1 "$OUT/log" 2>/dev/null || true; } | cut -f1)
    evb=$({ du -s -B1 "$OUT/evidence" 2>/dev/null || true; } | cut -f1)
    metrics | grep -E '^(gcm_decisions_total|gcm_capture_to_decision_seconds_(bucket|sum|count))' >"$OUT/.now" || true
    # Interval latency: what grew since the previous sample.
    lat=$(awk '
        FNR == NR { old[$1] = $2; next }
        { new[$1] = $2 }
        END {
            n = new["gcm_capture_to_decision_seconds_count"] - old["gcm_capture_to_decision_seconds_count"]
            s = new["gcm_capture_to_decision_seconds_sum"] - old["gcm_capture_to_decision_seconds_sum"]
            if (n <= 0) { print ","; exit }
            p99 = ""
            for (k in new) if (k ~ /_bucket\{/) {
                le = k; sub(/.*le="/, "", le); sub(/".*/, "", le)
                c = new[k] - old[k]
                if (c >= 0.99 * n && (p99 == "" || (le != "+Inf" && (p99 == "+Inf" || le + 0 < p99 + 0)))) p99 = le
            }
            printf "%.2f,%s", 1000 * s / n, (p99 == "+Inf" ? "inf" : sprintf("%.1f", 1000 * p99))
        }' "$prev" "$OUT/.now")
    dec=$(awk '$1 ~ /^gcm_decisions_total/ {n += $2} END {print n + 0}' "$OUT/.now")
    mv "$OUT/.now" "$prev"
    if [ "$next" -gt 0 ]; then
        echo "$t,$rss,$fds,${logb:-0},${evb:-0},${dec:-},$lat" >>"$OUT/samples.csv"
    fi
    next=$((next + 1))
    awk -v t="$t" -v d="$DURATION_S" 'BEGIN {exit !(t >= d)}' && break
    sleep "$SAMPLE_S"
done
trap - EXIT
kill -TERM "$pid"
wait "$pid" || { echo "soak: the daemon exited $? at the stop" >&2; tail -n 20 "$OUT/stderr.txt" >&2; exit 1; }
rm -f "$prev"

# Least-squares slope per hour of each column, over all samples and over
# the second half.
awk -F, -v dur="$DURATION_S" -v fps="$FPS" '
    NR == 1 { for (i = 2; i <= NF; i++) name[i] = $i; cols = NF; next }
    {
        n++; t[n] = $1
        for (i = 2; i <= cols; i++) v[n, i] = $i
    }
    function slope(from, i,   k, m, st, sv, stt, stv, x, y) {
        m = 0; st = sv = stt = stv = 0
        for (k = from; k <= n; k++) {
            if (v[k, i] == "" || v[k, i] == "inf") continue
            x = t[k] / 3600; y = v[k, i] + 0
            m++; st += x; sv += y; stt += x * x; stv += x * y
        }
        if (m < 2 || stt * m == st * st) return "n/a"
        x = (m * stv - st * sv) / (m * stt - st * st)
        # Rounding noise of a constant column is no slope.
        return (x < 1e-6 && x > -1e-6) ? "0" : sprintf("%.4g", x)
    }
    END {
        printf "soak run: %d s at %d fps, %d samples\n\n", dur, fps, n
        printf "| column | first | last | min | max | slope/h (all) | slope/h (2nd half) |\n|---|---|---|---|---|---|---|\n"
        for (i = 2; i <= cols; i++) {
            lo = hi = ""; first = last = ""
            for (k = 1; k <= n; k++) {
                if (v[k, i] == "" || v[k, i] == "inf") continue
                y = v[k, i] + 0
                if (first == "") first = v[k, i]
                last = v[k, i]
                if (lo == "" || y < lo) lo = y
                if (hi == "" || y > hi) hi = y
            }
            printf "| %s | %s | %s | %s | %s | %s | %s |\n", name[i], first, last, lo, hi, slope(1, i), slope(int(n / 2) + 1, i)
        }
    }' "$OUT/samples.csv" | tee "$OUT/report.md"
echo
echo "daemon summary: $(tr -d '\n' <"$OUT/summary.json" | head -c 400)"
echo "samples: $OUT/samples.csv; report: $OUT/report.md"
