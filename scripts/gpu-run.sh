#!/usr/bin/env bash
# The whole GPU check, on a lent GPU machine (x86-64, NVIDIA driver, CUDA 13
# user-space libraries in PyTorch's nvidia-* packages; no Rust needed):
#
#   bash scripts/gpu-run.sh [CARRY_DIR] [OUT_DIR]
#
# CARRY_DIR (default .gpu-carry) is what scripts/gpu-build.sh made here;
# OUT_DIR defaults to $OUT when set, else /tmp/gcm-gpu-out.
#
# Steps (each logged to OUT_DIR; a failing step does not stop the others,
# the exit status is non-zero if any failed):
#   1. env.txt     GPU, driver, which CUDA libraries the executables load;
#   2. parity.log  every GPU parity test (tests gpu_ --ignored): fused score
#                  forward/backward, strided inputs, evidence, preprocessing,
#                  whole model, and the daemon-style reference cross-check on
#                  a replay of camera frames;
#   3. bench.log, bench.json   the GPU benchmarks (benches/gpu.rs);
#   4. torch.log, torch.json   the same network in PyTorch on the same GPU
#                  (scripts/reference/gcm_torch_gpu.py), checked against our scores;
#   5. daemon.log  `gcm-inspect run` with device: cuda on a replay of synthetic
#                  frames, reference cross-check (b) on every frame, then
#                  `gcm-inspect verify` over its log;
#   6. summary.txt the headline figures.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$(cd "${1:-$root/.gpu-carry}" && pwd)"
out="${2:-${OUT:-/tmp/gcm-gpu-out}}"
mkdir -p "$out"
work="$(mktemp -d /tmp/gcm-gpu.XXXXXX)"
mkdir -p "$work/bin" "$work/lib" "$work/bench"
status=0
step() { printf '\n=== %s\n' "$*"; }

tar -C "$work/bin" -xzf "$carry/bins.tar.gz"

# CUDA 13 user-space libraries: the folders of PyTorch's nvidia-* packages.
py="${PYTHON:-python3}"
libdirs=$("$py" - <<'EOF' 2>/dev/null
import os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = set()
for r in roots:
    for d, _, files in os.walk(r):
        if any(".so" in f for f in files):
            dirs.add(d)
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$work/lib${libdirs:+:$libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The driver's own library (libcuda.so.1) lives outside those packages.
searchdirs="$libdirs:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/lib/x86_64-linux-gnu:/usr/lib64:/usr/local/cuda/lib64:/usr/local/cuda/compat"
# Each library the executables need but the loader cannot find: link the
# file of the same library (libNAME.so.*) from those folders under the
# needed name.
for exe in "$work"/bin/*; do
    ldd "$exe" 2>/dev/null | awk '/not found/ {print $1}'
done | sort -u | while read -r soname; do
    base="${soname%%.so*}"
    found=""
    IFS=: read -ra ds <<<"$searchdirs"
    for d in "${ds[@]}"; do
        f=$(ls "$d/$base".so* 2>/dev/null | sort | tail -n 1)
        if [ -n "$f" ]; then found="$f"; break; fi
    done
    if [ -n "$found" ]; then
        ln -sf "$found" "$work/lib/$soname"
        echo "linked $soname -> $found"
    else
        echo "NOT FOUND: $soname"
    fi
done >"$work/links.txt"

{
    step "manifest"
    cat "$carry/MANIFEST"
    step "nvidia-smi"
    nvidia-smi 2>&1 | head -n 20
    step "library links"
    cat "$work/links.txt"
    for exe in gcm-inspect tests gpu; do
        step "ldd $exe"
        ldd "$work/bin/$exe" | grep -E "cu|nvrtc|not found"
    done
    step "python"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if grep -q "not found" "$out/env.txt"; then
    echo "some CUDA libraries are missing (see env.txt); the steps below will fail"
    status=1
fi

step "parity tests" | tee "$out/parity.log"
(cd "$work" && "$work/bin/tests" gpu_ --ignored --test-threads=1 --nocapture) \
    >>"$out/parity.log" 2>&1 || status=1
tail -n 25 "$out/parity.log"

step "benchmarks" | tee "$out/bench.log"
"$work/bin/gpu" --out-dir "$work/bench" >>"$out/bench.log" 2>&1 || status=1
cp "$work/bench/bench.json" "$out/bench.json" 2>/dev/null
cat "$out/bench.log"

step "PyTorch reference" | tee "$out/torch.log"
"$py" "$root/scripts/reference/gcm_torch_gpu.py" --model "$work/bench/model" \
    --input "$work/bench/input.safetensors" --scores "$work/bench/scores.safetensors" \
    --out "$out/torch.json" >>"$out/torch.log" 2>&1 || status=1
cat "$out/torch.log"

# The daemon itself with device: cuda on a replay of synthetic camera frames,
# its reference cross-check (b) on every frame against the CPU reference and
# check (a) on every decision; then `verify` over the log. Uses the
# benchmark's model (Table 3, 256x256 grey, crack/ok).
step "daemon replay with device cuda" | tee "$out/daemon.log"
# (A function with explicit checks: `set -e` does not act inside `... || x`.)
daemon_replay() {
    local d="$work/daemon" g="$work/bin/gcm-inspect" lines divergent
    mkdir -p "$d/flat" || return 1
    [ -f "$work/bench/model/model.json" ] || { echo "no model: the benchmark step did not write one"; return 1; }
    "$g" synth --out "$d/frames" --count 48 --seed 5 --size 256 --classes crack,ok || return 1
    find "$d/frames" -name '*.png' -exec cp {} "$d/flat/" \; || return 1
    cat >"$d/replay.yaml" <<YAML
model: $work/bench/model
device: cuda
source:
  replay:
    dir: flat
    fps: 0
output:
  log_dir: log
  evidence_dir: evidence
evidence:
  every_nth_frame: 8
checks:
  evidence_every_nth_frame: 1
  reference_every_nth_frame: 1
metrics:
  enabled: false
YAML
    "$g" run --config "$d/replay.yaml" --max-frames 48 || return 1
    lines=$(wc -l <"$d/log/decisions.jsonl") || return 1
    divergent=$(grep -c '"divergent":true' "$d/log/decisions.jsonl")
    echo "decisions: $lines, divergent: ${divergent:-0}"
    "$g" verify "$d/log" || return 1
    [ "$lines" -ge 48 ] && [ "${divergent:-0}" = 0 ]
}
daemon_replay >>"$out/daemon.log" 2>&1 || status=1
tail -n 15 "$out/daemon.log"

"$py" - "$out" >"$out/summary.txt" 2>&1 <<'EOF'
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        return {"missing": str(e)}
b, t = load("bench.json"), load("torch.json")
parity = open(os.path.join(out, "parity.log")).read()
m = re.findall(r"test result: .*", parity)
print("parity:", m[-1] if m else "no test result (see parity.log)")
daemon = open(os.path.join(out, "daemon.log")).read()
m = re.findall(r"decisions: \d+, divergent: \d+", daemon)
print("daemon replay (device cuda, cross-check every frame):", m[-1] if m else "did not finish (see daemon.log)")
if "copy_gbs_read_plus_write" in b:
    print(f"device-to-device copy: {b['copy_gbs_read_plus_write']:.0f} GB/s (read+write)")
    for r in b["score"]:
        print(f"score {r['problem']}: fused {r['fused_us']:.1f} us = {r['fused_gbs']:.0f} GB/s "
              f"({r['fused_pct_of_copy']:.1f}% of copy), stock {r['stock_us']:.1f} us "
              f"-> {r['speedup_over_stock']:.1f}x (channel-sum-first stock: "
              f"{r['speedup_over_stock_channel_sum_first']:.1f}x)")
    m = b["model"]
    print(f"model: batch 1 {m['batch1_latency_ms']:.3f} ms, camera-to-decision "
          f"{m['batch1_camera_to_decision_ms']:.3f} ms, batch 64 {m['batch64_images_per_s']:.0f} img/s")
else:
    print("bench:", b)
if "batch1_latency_ms" in t:
    print(f"pytorch ({t['torch']}, {t['mode']}): batch 1 {t['batch1_latency_ms']:.3f} ms, "
          f"batch 64 {t['batch64_images_per_s']:.0f} img/s; scores vs ours: max rel diff "
          f"{t['max_rel_score_diff_vs_gcm_inspect']:.1e}")
else:
    print("pytorch:", t)
EOF
step "summary"
cat "$out/summary.txt"
rm -rf "$work"
exit $status
