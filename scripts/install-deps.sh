#!/usr/bin/env bash
# Installs what building and testing gcm-inspect needs on a Debian/Ubuntu
# machine that has Rust: libclang-dev (the v4l crate runs bindgen), a C++
# compiler (the tests run our CUDA kernels under a host emulation,
# kernels/emu/),
# systemd (systemd-analyze checks the unit), and mosquitto with its clients
# (the MQTT output's tests start a real broker; the publish latency script
# subscribes with mosquitto_sub), chromium and chromium-driver (the review
# page's browser test drives a headless chromium over WebDriver; it fails
# without them), and GStreamer 1.22 (the `gstreamer` source, a default
# feature: the development files it links against and those of the RTSP
# server the camera tests stream from, the plugins its pipelines and tests
# use: rtspsrc, decoders, jpegenc, x264enc, videotestsrc, and
# gst-inspect-1.0). Idempotent: installs only what is missing.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
for p in libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev \
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
    gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
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
