#!/usr/bin/env bash
# Checks systemd/gcm-inspect.service and the per-camera template
# gcm-inspect@.service: `systemd-analyze verify` (syntax, every
# directive known, the binary executable) and `systemd-analyze security`
# (exposure score, printed). Needs the `systemd` package, no running systemd.
#
#   systemd/check-unit.sh [BINARY]     BINARY defaults to target/debug/gcm-inspect
#
# The unit names /usr/local/bin/gcm-inspect; verify insists that the binary
# exists, so a copy of the unit pointing at BINARY is checked instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:-$here/../target/debug/gcm-inspect}")"
[ -x "$bin" ] || { echo "check-unit: $bin is not an executable (build first)" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/gcm-inspect#$bin#g" "$here/gcm-inspect.service" >"$tmp/gcm-inspect.service"
systemd-analyze verify "$tmp/gcm-inspect.service"
echo "systemd-analyze verify: OK"
# The CUDA drop-in applied on top of the unit.
mkdir "$tmp/gcm-inspect.service.d"
cp "$here/gcm-inspect.service.d/cuda.conf" "$tmp/gcm-inspect.service.d/"
# verify only warns about a drop-in's unknown keys: any word about it fails.
SYSTEMD_UNIT_PATH="$tmp:" systemd-analyze verify "$tmp/gcm-inspect.service" 2>"$tmp/dropin.err" || {
    cat "$tmp/dropin.err" >&2; exit 1; }
if grep -q "cuda.conf" "$tmp/dropin.err"; then
    cat "$tmp/dropin.err" >&2
    echo "check-unit: gcm-inspect.service.d/cuda.conf has errors" >&2
    exit 1
fi
echo "systemd-analyze verify with gcm-inspect.service.d/cuda.conf: OK"
systemd-analyze security --offline=true --no-pager "$tmp/gcm-inspect.service" | tail -n 1

# The template, checked as an instance, and kept the main unit's twin: below
# [Unit] only the lines naming the instance may differ.
sed "s#/usr/local/bin/gcm-inspect#$bin#g" "$here/gcm-inspect@.service" >"$tmp/gcm-inspect@.service"
SYSTEMD_UNIT_PATH="$tmp:" systemd-analyze verify "$tmp/gcm-inspect@cam1.service" 2>"$tmp/template.err" || {
    cat "$tmp/template.err" >&2; exit 1; }
if grep -q "gcm-inspect@" "$tmp/template.err"; then
    cat "$tmp/template.err" >&2
    echo "check-unit: gcm-inspect@.service has errors" >&2
    exit 1
fi
echo "systemd-analyze verify gcm-inspect@cam1.service: OK"
body() { sed -n '/^\[Unit\]/,$p' "$1" | grep -v '^#' | grep -v '^Description=' | grep -v '^ExecStart=' |
    sed -e 's#^\(StateDirectory\|LogsDirectory\)=gcm-inspect/%i$#\1=gcm-inspect#'; }
if ! diff <(body "$here/gcm-inspect.service") <(body "$here/gcm-inspect@.service") >"$tmp/drift"; then
    cat "$tmp/drift" >&2
    echo "check-unit: gcm-inspect@.service differs from gcm-inspect.service beyond the instance lines" >&2
    exit 1
fi
grep -q '^ExecStart=.* --config /etc/gcm-inspect/%i.yaml$' "$here/gcm-inspect@.service" || {
    echo "check-unit: gcm-inspect@.service must run /etc/gcm-inspect/%i.yaml" >&2; exit 1; }
echo "gcm-inspect@.service is gcm-inspect.service per instance: OK"
