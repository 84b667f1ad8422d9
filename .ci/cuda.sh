#!/usr/bin/env bash
# CUDA compile check for CI (called by .ci/run): no GPU is needed or used.
#
# 1. Installs nvcc (Debian's nvidia-cuda-toolkit 11.8, from the non-free and
#    contrib components of the mirror and suite the machine already uses) if
#    it is not there yet.
# 2. Runs clippy on every target with `--features cuda`, warnings denied, so
#    the CUDA code (our kernels in kernels/*.cu, compiled to PTX by build.rs,
#    which clippy runs too, and the Rust behind `#[cfg(feature = "cuda")]`)
#    cannot rot on machines without a GPU. A separate `cargo build` would
#    add nothing but linking (cudarc loads the driver at run time) and
#    compile candle-kernels' CUDA sources a second time, so it is not run;
#    scripts/gpu-build.sh builds the binaries for a GPU machine.
#
# The CUDA build has its own target directory (candle-kernels alone takes
# many minutes of nvcc on two cores), by default outside the clone so that
# later CI runs on the same machine reuse it:
#   GCM_CUDA_TARGET_DIR (default: $HOME/.cache/gcm-inspect/target-cuda)
# Measured on a 2-core CI-sized machine shared with other builds (load ~5):
# installing the toolkit 2.5 min on a fresh machine; with an empty target dir
# clippy 15 to 16 min (most of it nvcc on candle-kernels' CUDA sources); with the
# target dir kept, 8 s with nothing changed and about 1 min after a change
# to this crate.
# Idempotent and non-interactive; safe to run again.
# `.ci/cuda.sh --install-only` stops after step 1 (scripts/gpu-build.sh uses it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

log() { printf '[cuda.sh] %s\n' "$*"; }
start=$(date +%s)

install_nvcc() {
    if command -v nvcc >/dev/null 2>&1; then
        log "nvcc present: $(nvcc --version | tail -n 1)"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    # The contrib and non-free components of the same mirror and suite the
    # machine uses (nvcc is in non-free; libcuda1, which it needs, depends on
    # nvidia-support from contrib).
    local list=/etc/apt/sources.list.d/gcm-inspect-non-free.sources
    if [ ! -f "$list" ]; then
        local uri suite
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
            suite=$(awk '/^Suites:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        else
            uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
            suite=$(awk '$1 == "deb" {print $3; exit}' /etc/apt/sources.list)
        fi
        : "${uri:?no Debian mirror found in the apt sources}"
        : "${suite:?no Debian suite found in the apt sources}"
        log "adding contrib non-free from $uri $suite"
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$uri" "$suite" | $sudo tee "$list" >/dev/null
    fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit >/dev/null
    log "installed: $(nvcc --version | tail -n 1)"
}

install_nvcc
log "install step: $(( $(date +%s) - start )) s"
if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi

# Debian's nvcc 11.8 takes at most gcc 11 as host compiler; bookworm's nvcc
# wrapper already points at a supported one (NVCC_CCBIN is honoured if set).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${GCM_CUDA_TARGET_DIR:-$HOME/.cache/gcm-inspect/target-cuda}"
mkdir -p "$CARGO_TARGET_DIR"
log "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

t=$(date +%s)
cargo clippy --locked --all-targets --features cuda -- -D warnings
log "clippy: $(( $(date +%s) - t )) s"
log "total: $(( $(date +%s) - start )) s"
