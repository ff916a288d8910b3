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

nvim --version | head -n 1
