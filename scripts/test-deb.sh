#!/usr/bin/env bash
# Installs a gcm-inspect .deb, checks the installed copy, removes it and
# checks that its files are gone (CI runs it on the package of the debug
# binary; see .ci/run).
#
#   scripts/test-deb.sh PATH.deb
#
# Checks: `dpkg -i`; /usr/bin/gcm-inspect --version names the package's
# version; `check-config /etc/gcm-inspect/default.yaml` passes (log and
# evidence folders in a temp dir, as systemd's LogsDirectory/StateDirectory
# would give); the man page, the three completions and the units are where
# the package says, the configs are conffiles, and `systemd-analyze verify`
# accepts the installed unit; `dpkg -r` removes every file but the
# conffiles, `dpkg --purge` those too. Refuses to run where gcm-inspect is
# already installed (it would remove it). Needs root or sudo.
set -euo pipefail
deb="${1:?usage: test-deb.sh PATH.deb}"
[ -f "$deb" ] || { echo "test-deb: $deb: no such file" >&2; exit 66; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' gcm-inspect 2>/dev/null | grep -q "installed"; then
    fail "gcm-inspect is installed on this machine already; not touching it"
fi
version="$(dpkg-deb -f "$deb" Version)"
tmp="$(mktemp -d)"
installed=0
cleanup() {
    [ "$installed" = 0 ] || $sudo dpkg --purge gcm-inspect >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# The package's files (directories that other packages own are not ours to check).
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's#^\./#/#' | grep -v '/$' | sort >"$tmp/files"
$sudo dpkg -i "$deb" >/dev/null
installed=1
echo "installed $(basename "$deb"): $(wc -l <"$tmp/files") files"

out="$(/usr/bin/gcm-inspect --version)"
[ "$out" = "gcm-inspect ${version%-*}" ] || fail "--version says '$out', the package is $version"
echo "--version: $out"

mkdir "$tmp/logs" "$tmp/state"
(cd "$tmp" && LOGS_DIRECTORY="$tmp/logs" STATE_DIRECTORY="$tmp/state" \
    /usr/bin/gcm-inspect check-config /etc/gcm-inspect/default.yaml) >"$tmp/check.out" 2>&1 \
    || { cat "$tmp/check.out" >&2; fail "check-config /etc/gcm-inspect/default.yaml"; }
echo "check-config /etc/gcm-inspect/default.yaml: OK"

for f in /usr/bin/gcm-inspect \
    /usr/share/man/man1/gcm-inspect.1.gz /usr/share/man/man1/gcm-inspect-run.1.gz \
    /usr/share/bash-completion/completions/gcm-inspect \
    /usr/share/zsh/vendor-completions/_gcm-inspect \
    /usr/share/fish/vendor_completions.d/gcm-inspect.fish \
    /usr/lib/systemd/system/gcm-inspect.service /usr/lib/systemd/system/gcm-inspect@.service \
    /usr/share/gcm-inspect/systemd/cuda.conf /usr/share/doc/gcm-inspect/README.md; do
    [ -s "$f" ] || fail "$f missing or empty"
done
zcat /usr/share/man/man1/gcm-inspect-check-config.1.gz | grep -q '^\.TH' || fail "man page is no roff page"
grep -q 'check-config' /usr/share/bash-completion/completions/gcm-inspect || fail "bash completion lacks check-config"
grep -q 'ExecStart=/usr/bin/gcm-inspect ' /usr/lib/systemd/system/gcm-inspect.service \
    || fail "the unit does not run /usr/bin/gcm-inspect"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/gcm-inspect.service
    echo "systemd-analyze verify (installed unit): OK"
fi
conffiles="$(dpkg-query -W -f='${Conffiles}\n' gcm-inspect | awk 'NF {print $1}' | sort)"
expected="$(printf '%s\n' /etc/gcm-inspect/camera.example.yaml /etc/gcm-inspect/default.yaml)"
[ "$conffiles" = "$expected" ] || fail "conffiles are '$conffiles'"

$sudo dpkg -r gcm-inspect >/dev/null
while read -r f; do
    if grep -qxF "$f" <<<"$conffiles"; then
        [ -e "$f" ] || fail "dpkg -r removed the conffile $f"
    else
        [ ! -e "$f" ] || fail "dpkg -r left $f"
    fi
done <"$tmp/files"
echo "dpkg -r: every file gone but the conffiles"
$sudo dpkg --purge gcm-inspect >/dev/null
installed=0
while read -r f; do
    [ ! -e "$f" ] || fail "dpkg --purge left $f"
done <"$tmp/files"
[ ! -e /etc/gcm-inspect ] || fail "dpkg --purge left /etc/gcm-inspect"
echo "dpkg --purge: every file gone, /etc/gcm-inspect too"
echo "test-deb: OK"
