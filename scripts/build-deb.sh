#!/usr/bin/env bash
# Builds the Debian package: gcm-inspect_VERSION-1_ARCH.deb in
# $CARGO_TARGET_DIR/debian/ (default target/debian/). Runs on the machine
# it builds for (amd64 here, arm64 on a Jetson: the same command).
#
#   scripts/build-deb.sh                          # release build, then the package
#   scripts/build-deb.sh --features cuda          # the CUDA build (on a Jetson: JetPack's nvcc,
#                                                 # README "Building for a Jetson")
#   scripts/build-deb.sh --profile dev --no-build # package target/debug/gcm-inspect as built
#                                                 # (CI: tests the packaging, not the release)
#
# Steps: installs cargo-deb (pinned) if missing; builds the binary; has the
# binary write its man pages and bash/zsh/fish completions, and copies the
# systemd units with /usr/bin/gcm-inspect for /usr/local/bin, all under
# TARGET/PROFILE/dist/ where Cargo.toml's [package.metadata.deb] assets
# take them; runs `cargo deb --no-build`. Prints the path of the .deb last.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
profile=release
build=1
features=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
        --no-build) build=0; shift ;;
        --features) features=(--features "${2:?--features needs a list}"); shift 2 ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 64 ;;
    esac
done
target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
    dev) dir=debug ;;
    *) dir="$profile" ;;
esac

bash scripts/install-cargo-tool.sh cargo-deb "$CARGO_DEB_VERSION"
if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" "${features[@]}" --bin gcm-inspect
fi
bin="$target/$dir/gcm-inspect"
[ -x "$bin" ] || { echo "build-deb: $bin missing (build it, or drop --no-build)" >&2; exit 66; }

dist="$target/$dir/dist"
rm -rf "$dist"
mkdir -p "$dist/man" "$dist/completions" "$dist/systemd"
"$bin" man --out-dir "$dist/man"
gzip -9n "$dist/man"/*.1
"$bin" completions bash >"$dist/completions/gcm-inspect"
"$bin" completions zsh >"$dist/completions/_gcm-inspect"
"$bin" completions fish >"$dist/completions/gcm-inspect.fish"
for u in gcm-inspect.service gcm-inspect@.service; do
    sed 's#/usr/local/bin/gcm-inspect#/usr/bin/gcm-inspect#g' "systemd/$u" >"$dist/systemd/$u"
done

# Another profile than release: fast compression. (cargo-deb 3.8 warns that
# it may refuse the dev profile in a later version; it is pinned above.)
fast=()
[ "$profile" = release ] || fast=(--fast)
cargo deb --no-build --strip --profile "$profile" "${fast[@]}" 2>&1 | tee "$dist/cargo-deb.out" >&2
deb="$(tail -n 1 "$dist/cargo-deb.out")"
[ -f "$deb" ] || { echo "build-deb: cargo deb named no package" >&2; exit 70; }
echo "$deb"
