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

# A current Neovim (trixie's 0.10) in a debootstrap root, so the plugin is tested on both ends of what it supports.
# About 90 s the first time, nothing once the root exists; SANDLINK_SKIP_CURRENT_NEOVIM=1 skips it.
current_root=${SANDLINK_NEOVIM_ROOT:-/var/cache/sandlink/trixie-neovim}
if [ -z "${SANDLINK_SKIP_CURRENT_NEOVIM:-}" ] && [ ! -x "$current_root/usr/bin/nvim" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-cache show debootstrap >/dev/null 2>&1 || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  # Built beside its final place and renamed at the end, so an interrupted run never looks finished.
  rm -rf "$current_root.partial"
  mkdir -p "$(dirname "$current_root")"
  debootstrap --variant=minbase --include=neovim trixie "$current_root.partial" http://deb.debian.org/debian >/dev/null
  rm -rf "$current_root"
  mv "$current_root.partial" "$current_root"
fi

nvim --version | head -n 1
if [ -x "$current_root/usr/bin/nvim" ]; then
  "$(dirname "${BASH_SOURCE[0]}")/../neovim/current-nvim.sh" --version | head -n 1
fi
