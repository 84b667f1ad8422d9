#!/usr/bin/env bash
# The main job on its embedded default: the inspection daemon with the demo
# model bundled in the binary, classifying synthetic EL images of solar cells
# (no camera needed). Stops after FRAMES frames (default 300); prints where
# the decision log and the evidence went.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
exec ./target/release/gcm-inspect run --max-frames "${FRAMES:-300}" "$@"
