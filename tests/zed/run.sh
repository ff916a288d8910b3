#!/usr/bin/env bash
# Tests the Zed extension: its logic as host unit tests, then the wasm32-wasip2 component build Zed would do.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
extension="$repo/zed-extension"
ci=${CI:-}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  if [ "$ci" = "true" ] || [ "$ci" = "1" ]; then
    echo "the wasm32-wasip2 target is missing (tests/setup/neovim.sh adds it)" >&2
    exit 1
  fi
  echo "skipping the Zed wasm build: the wasm32-wasip2 target is missing (tests/setup/neovim.sh adds it)" >&2
  skip_wasm=1
fi

if cargo fmt --version >/dev/null 2>&1; then
  echo "== Zed extension: formatting"
  (cd "$extension" && cargo fmt --check)
fi

echo "== Zed extension: host unit tests"
(cd "$extension" && cargo test --quiet --locked)

if [ -z "${skip_wasm:-}" ]; then
  echo "== Zed extension: wasm32-wasip2 build"
  (cd "$extension" && cargo build --quiet --locked --target wasm32-wasip2 --release)
  wasm="$extension/target/wasm32-wasip2/release/sandlink_zed.wasm"
  # Zed loads a WebAssembly component (layer 1 in the header), not a core module, exporting the extension world.
  header=$(od -An -tx1 -N8 "$wasm" | tr -d ' \n')
  if [ "$header" != "0061736d0d000100" ]; then
    echo "$wasm is not a WebAssembly component (header $header)" >&2
    exit 1
  fi
  if ! grep -aq 'language-server-command' "$wasm"; then
    echo "$wasm does not export language-server-command" >&2
    exit 1
  fi
  echo "built $(du -h "$wasm" | cut -f1) component: $wasm"
fi
