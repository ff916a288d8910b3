#!/usr/bin/env bash
# Installs what every test needs on a fresh Debian machine (bubblewrap for the local driver's isolation); idempotent.
set -euo pipefail

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/setup/base.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
    # The package lists may be stale or absent on a fresh machine; refresh once before installing.
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# An unprivileged account for the escape suite (tests/rust/escape.rs), which attacks the local driver's isolation
# as root and as an ordinary user.
if [ "$(id -u)" -eq 0 ] && ! id sandlink-escape >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh sandlink-escape
fi

# Names the network-policy tests give their local servers (tests/rust/netpolicy.rs): one host an allow-list names,
# one it does not. Loopback addresses only, so no test ever reaches beyond this machine.
for entry in "127.0.0.2 allowed.sandlink.test" "127.0.0.3 denied.sandlink.test"; do
    if ! grep -qE "^[[:space:]]*${entry%% *}[[:space:]].*\\b${entry#* }\\b" /etc/hosts; then
        if [ -w /etc/hosts ]; then
            echo "$entry" >>/etc/hosts
        else
            echo "tests/setup/base.sh: please add \"$entry\" to /etc/hosts (the network policy tests need it)" >&2
            exit 1
        fi
    fi
done
