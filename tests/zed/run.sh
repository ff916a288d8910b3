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

# The Zed workflow itself (code actions + workspace/executeCommand, output as window/logMessage) against the real
# server, checked against the action titles the README shows.
server_binary=${SANDLINK_BIN:-$repo/target/debug/sandlink}
if [ ! -x "$server_binary" ]; then
  (cd "$repo" && cargo build --quiet --bin sandlink) || true
fi
if [ -x "$server_binary" ]; then
  echo "== Zed workflow through code actions, against $server_binary"
  SANDLINK_BIN="$server_binary" timeout 180 python3 "$repo/tests/zed/code_action_workflow.py"
elif [ "$ci" = "true" ] || [ "$ci" = "1" ]; then
  echo "no server binary at $server_binary for the Zed workflow test" >&2
  exit 1
else
  echo "skipping the Zed workflow test: no server binary at $server_binary" >&2
fi
