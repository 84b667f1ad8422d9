#!/usr/bin/env bash
# `cargo deny check` for CI (called by .ci/run): advisories, licences, bans
# and sources of the dependency graph, as deny.toml says (each waiver there
# has its reason).
#
# cargo-deny is installed from crates.io at a pinned version if missing
# (scripts/install-cargo-tool.sh; ~/.cargo/bin stays between CI runs).
# The RustSec advisory database is a git repository that cargo-deny clones
# into ~/.cargo/advisory-dbs/. Where it cannot be fetched (a machine that
# reaches only the package registries), the copy from an earlier fetch is
# used, and its date printed; where there is none, the advisories check is
# skipped with a line that says so, and the other three still run.
# Measured on the 2-core CI machine (other builds running, load ~5):
# installing cargo-deny 0.20.2 cold 263 s; the check itself ~2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
bash scripts/install-cargo-tool.sh cargo-deny "$CARGO_DENY_VERSION"
# Every crate of the lock file (all features, all targets) on disk, so that
# the check can run --offline.
cargo metadata --locked --all-features --format-version 1 >/dev/null

checks=(bans licenses sources)
dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if cargo deny --locked fetch db >/tmp/cargo-deny-fetch.$$ 2>&1; then
    checks+=(advisories)
    echo "advisory database: fetched"
else
    db="$(find "$dbs" -mindepth 2 -maxdepth 2 -name .git -printf '%h\n' 2>/dev/null | head -n 1)"
    if [ -n "$db" ]; then
        checks+=(advisories)
        echo "advisory database: cannot be fetched ($(grep -m1 -o 'Could not resolve host: [^ ]*' /tmp/cargo-deny-fetch.$$ || echo "cargo deny fetch db failed")); using the copy of $(git -C "$db" log -1 --format=%cs)"
    else
        echo "advisory database: cannot be fetched and none is cached: advisories SKIPPED"
    fi
fi
rm -f /tmp/cargo-deny-fetch.$$
cargo deny --locked --offline check --hide-inclusion-graph "${checks[@]}"
