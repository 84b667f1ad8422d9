#!/usr/bin/env bash
# Installs what building and testing gcm-inspect needs on a Debian/Ubuntu
# machine that has Rust: libclang-dev (the v4l crate runs bindgen), a C++
# compiler (the tests run our CUDA kernels under a host emulation,
# kernels/emu/),
# systemd (systemd-analyze checks the unit), and mosquitto with its clients
# (the MQTT output's tests start a real broker; the publish latency script
# subscribes with mosquitto_sub), chromium and chromium-driver (the review
# page's browser test drives a headless chromium over WebDriver; it fails
# without them). Idempotent: installs only what is missing.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
done
