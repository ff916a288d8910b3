#!/usr/bin/env bash
# Installs what the Neovim and Zed client tests need (Debian's neovim, the wasm32-wasip2 target), idempotently.
set -euo pipefail

# Neovim: Debian 12 ships 0.7.2, which the plugin supports; installing it is skipped when any nvim is present.
if ! command -v nvim >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update is only needed once per machine; skip it when the package lists are already there.
  if ! apt-cache show neovim >/dev/null 2>&1; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends neovim >/dev/null
fi

# The Zed extension is a wasm component; the target comes from rustup and is a no-op when installed.
if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
  fi
else
  echo "rustup is missing: the Zed extension cannot be built for wasm32-wasip2" >&2
  exit 1
fi

# Newer Neovims (trixie's 0.10, sid's current release) in debootstrap roots, so the plugin is tested across what it
# supports. About 2 minutes each the first time, nothing once a root exists; SANDLINK_SKIP_CURRENT_NEOVIM=1 skips them.
if [ -z "${SANDLINK_SKIP_CURRENT_NEOVIM:-}" ]; then
  for suite in trixie sid; do
    root="/var/cache/sandlink/$suite-neovim"
    [ -x "$root/usr/bin/nvim" ] && continue
    if ! command -v debootstrap >/dev/null 2>&1; then
      apt-cache show debootstrap >/dev/null 2>&1 || apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    # Built beside its final place and renamed at the end, so an interrupted run never looks finished.
    rm -rf "$root.partial"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase --include=neovim "$suite" "$root.partial" http://deb.debian.org/debian >/dev/null
    rm -rf "$root"
    mv "$root.partial" "$root"
  done
fi

nvim --version | head -n 1
for root in /var/cache/sandlink/trixie-neovim /var/cache/sandlink/sid-neovim; do
  if [ -x "$root/usr/bin/nvim" ]; then
    SANDLINK_NEOVIM_ROOT="$root" "$(dirname "${BASH_SOURCE[0]}")/../neovim/current-nvim.sh" --version | head -n 1
  fi
done
