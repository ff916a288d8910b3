#!/usr/bin/env bash
# Builds, unit-tests and packages the VS Code extension, then runs its end-to-end test in a real VS Code (code-server).
#
# Expects tests/setup/vscode.sh to have run. Exits non-zero on any failure; the e2e part ends with "N passed, N failed".
# The server binary ($SANDLINK_SERVER_BINARY, else $SANDLINK_BIN as scripts/test exports it, else target/debug/sandlink)
# is built by the top-level test script; this waits for it for up to $SANDLINK_WAIT_FOR_SERVER_SECONDS, because another
# job may still be compiling it: 900 s by default, 60 s under CI, where the build stage has already run.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
extension_dir="$repo_root/vscode-extension"
server_binary="${SANDLINK_SERVER_BINARY:-${SANDLINK_BIN:-$repo_root/target/debug/sandlink}}"
log() { printf '[vscode] %s\n' "$*" >&2; }
# npm prints a warning for every user config key it does not know; the machine's ~/.npmrc has one.
quiet_npm() { npm "$@" 2>&1 | grep -v 'Unknown user config' || true; }

started_at=$(date +%s)
cd "$extension_dir"
[[ -d node_modules ]] || { log "vscode-extension/node_modules is missing: run tests/setup/vscode.sh first"; exit 1; }

log "type-checking"
npx --no-install tsc -p . --noEmit

log "unit tests"
npx --no-install tsc -p tsconfig.test.json
node --test --test-reporter=spec out/test/

log "bundling and packaging the .vsix"
rm -f sandlink.vsix
node esbuild.mjs --production
npx --no-install vsce package --no-dependencies --skip-license --allow-missing-repository --out sandlink.vsix 2>&1 |
  grep -v 'Unknown user config' >&2
[[ -s sandlink.vsix ]] || { log "vsce did not produce sandlink.vsix"; exit 1; }
unit_and_package_seconds=$(($(date +%s) - started_at))

waited=0
if [[ "${CI:-}" == "true" ]]; then default_wait=60; else default_wait=900; fi
wait_limit="${SANDLINK_WAIT_FOR_SERVER_SECONDS:-$default_wait}"
while [[ ! -x "$server_binary" ]]; do
  if ((waited >= wait_limit)); then
    log "the server binary $server_binary did not appear within ${wait_limit} s; build it with 'cargo build'"
    echo "0 passed, 1 failed"
    exit 1
  fi
  ((waited % 60 == 0)) && log "waiting for $server_binary (built by cargo build)…"
  sleep 5
  waited=$((waited + 5))
done

log "end-to-end test in code-server"
e2e_started_at=$(date +%s)
status=0
SANDLINK_VSIX="$extension_dir/sandlink.vsix" SANDLINK_SERVER_BINARY="$server_binary" \
  node "$repo_root/tests/vscode/e2e.mjs" || status=$?
log "unit tests and packaging: ${unit_and_package_seconds} s; end-to-end: $(($(date +%s) - e2e_started_at)) s"
exit "$status"
