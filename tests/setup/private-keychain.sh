#!/usr/bin/env bash
# Sourced by test runners: start_private_keychain DIR starts a private session bus with gnome-keyring's Secret Service
# on it, unlocked the way a desktop login does it, and exports DBUS_SESSION_BUS_ADDRESS; the pids to stop are in
# private_keychain_pids. No service activation on the bus, so nothing else can claim the secrets name.
private_keychain_pids=()
start_private_keychain() {
  local home=$1
  mkdir -p "$home"
  cat >"$home/bus.conf" <<'CONF'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
CONF
  dbus-daemon --config-file="$home/bus.conf" --nofork --print-address=1 >"$home/address" 2>/dev/null &
  private_keychain_pids+=($!)
  for _ in $(seq 1 100); do [[ -s "$home/address" ]] && break; sleep 0.05; done
  DBUS_SESSION_BUS_ADDRESS="$(head -n 1 "$home/address")"
  export DBUS_SESSION_BUS_ADDRESS
  (printf %s e2e-login-password | HOME="$home" XDG_RUNTIME_DIR="$home" exec gnome-keyring-daemon --foreground --unlock \
    --components=secrets) >/dev/null 2>&1 &
  private_keychain_pids+=($!)
  for _ in $(seq 1 200); do
    if dbus-send --session --print-reply --dest=org.freedesktop.secrets /org/freedesktop/secrets/collection/login \
      org.freedesktop.DBus.Properties.Get string:org.freedesktop.Secret.Collection string:Locked 2>/dev/null |
      grep -q 'boolean false'; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

