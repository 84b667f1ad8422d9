#!/usr/bin/env bash
# Installs a cargo subcommand from crates.io at a pinned version, unless that
# version is already in ~/.cargo/bin (which stays between CI runs on one
# machine, so only the first run pays for the build).
#
#   scripts/install-cargo-tool.sh CRATE VERSION      e.g. cargo-deny 0.20.2
#
# Built with --locked (the tool's own lock file) in a throw-away target
# folder, not in the project's CARGO_TARGET_DIR.
set -euo pipefail
crate="${1:?usage: install-cargo-tool.sh CRATE VERSION}"
version="${2:?usage: install-cargo-tool.sh CRATE VERSION}"
sub="${crate#cargo-}"
if have="$(cargo "$sub" --version 2>/dev/null)" && [ "${have##* }" = "$version" ]; then
    echo "$crate $version present" >&2
    exit 0
fi
echo "installing $crate $version (had: ${have:-none})" >&2
start=$(date +%s)
env -u CARGO_TARGET_DIR cargo install --quiet --locked "$crate" --version "$version"
echo "$crate $version installed in $(( $(date +%s) - start )) s" >&2
