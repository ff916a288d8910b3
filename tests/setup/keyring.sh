#!/bin/sh
# Installs what the keychain tests need: a D-Bus session bus and gnome-keyring's Secret Service (plus secret-tool
# for checking by hand). Idempotent and fast when already installed; the tests start their own bus and keyring
# with a temporary HOME, so nothing here keeps running.
set -eu
missing=""
command -v dbus-daemon >/dev/null 2>&1 || missing="$missing dbus-daemon"
command -v dbus-run-session >/dev/null 2>&1 || missing="$missing dbus-bin"
command -v gnome-keyring-daemon >/dev/null 2>&1 || missing="$missing gnome-keyring"
command -v secret-tool >/dev/null 2>&1 || missing="$missing libsecret-tools"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # the package list is meant to split
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/tests/.run"
printf 'SANDLINK_KEYRING_READY=1\n' > "$root/tests/.run/keyring.env"
