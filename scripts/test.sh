#!/usr/bin/env bash
# The test command: installs the build dependencies, then runs every test
# (unit tests and the integration tests, which run the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test "$@"
