#!/usr/bin/env bash
# Builds, unit-tests and packages the VS Code extension, then runs its end-to-end test in a real VS Code (code-server).
#
# Expects tests/setup/vscode.sh to have run. Every part runs even when an earlier one failed (except that the e2e test
# needs the .vsix), so one run shows every problem. The exit status is non-zero on any failure, and the last line counts
# unit tests and e2e steps together: "N passed, N failed".
# The server binary ($SANDLINK_SERVER_BINARY, else $SANDLINK_BIN as scripts/test exports it, else target/debug/sandlink)
# is built by the top-level test script; this waits for it for up to $SANDLINK_WAIT_FOR_SERVER_SECONDS, because another
# job may still be compiling it: 900 s by default, 60 s under CI, where the build stage has already run.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
extension_dir="$repo_root/vscode-extension"
server_binary="${SANDLINK_SERVER_BINARY:-${SANDLINK_BIN:-$repo_root/target/debug/sandlink}}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/sandlink-vscode-run.XXXXXX")"
private_keychain_pids=()
trap 'kill "${private_keychain_pids[@]}" 2>/dev/null; rm -rf "$scratch"' EXIT
log() { printf '[vscode] %s\n' "$*" >&2; }
# npm prints a warning for every user config key it does not know, and this machine's ~/.npmrc has one.
without_npm_noise() { grep -v 'Unknown user config' || true; }

passed=0
failed=0
failed_parts=()
record_failure() { failed=$((failed + 1)); failed_parts+=("$1"); }

started_at=$(date +%s)
cd "$extension_dir" || exit 1
if [[ ! -d node_modules ]]; then
  log "vscode-extension/node_modules is missing: run tests/setup/vscode.sh first"
  echo "0 passed, 1 failed"
  exit 1
fi

# Compiling the tests type-checks the whole extension too (tsconfig.test.json covers src/ and test/).
log "type-checking and unit tests"
rm -rf out
if npx --no-install tsc -p tsconfig.test.json; then
  node --test --test-reporter=spec out/test/ 2>&1 | tee "$scratch/unit.txt"
  unit_status=${PIPESTATUS[0]}
  unit_passed=$(sed -n 's/^ℹ pass \([0-9]*\)$/\1/p' "$scratch/unit.txt" | tail -1)
  unit_failed=$(sed -n 's/^ℹ fail \([0-9]*\)$/\1/p' "$scratch/unit.txt" | tail -1)
  passed=$((passed + ${unit_passed:-0}))
  failed=$((failed + ${unit_failed:-0}))
  if ((unit_status != 0)); then
    failed_parts+=("unit tests")
    # A crash of the runner itself reports no counts; it still has to count as a failure.
    [[ -z "$unit_failed" || "$unit_failed" == 0 ]] && failed=$((failed + 1))
  fi
else
  record_failure "type-checking (tsc)"
fi

log "bundling and packaging the .vsix"
rm -f sandlink.vsix
if node esbuild.mjs --production &&
  npx --no-install vsce package --no-dependencies --skip-license --allow-missing-repository --out sandlink.vsix 2>&1 |
  without_npm_noise >&2 && [[ -s sandlink.vsix ]]; then
  passed=$((passed + 1))
else
  record_failure "packaging"
fi
unit_and_package_seconds=$(($(date +%s) - started_at))

run_e2e=true
if [[ ! -s sandlink.vsix ]]; then
  log "no .vsix, so no end-to-end test"
  record_failure "end-to-end (no .vsix)"
  run_e2e=false
fi

if $run_e2e; then
  waited=0
  if [[ "${CI:-}" == "true" ]]; then default_wait=60; else default_wait=900; fi
  wait_limit="${SANDLINK_WAIT_FOR_SERVER_SECONDS:-$default_wait}"
  while [[ ! -x "$server_binary" ]]; do
    if ((waited >= wait_limit)); then
      log "the server binary $server_binary did not appear within ${wait_limit} s; build it with 'cargo build'"
      record_failure "end-to-end (no server binary)"
      run_e2e=false
      break
    fi
    if ((waited % 60 == 0)); then log "waiting for $server_binary (built by cargo build)…"; fi
    sleep 5
    waited=$((waited + 5))
  done
fi

# A private Secret Service: the e2e test stores a key through the editor.
# shellcheck source=tests/setup/private-keychain.sh
. "$repo_root/tests/setup/private-keychain.sh"
start_keychain() {
  start_private_keychain "$scratch/keychain"
}

e2e_seconds=0
if $run_e2e && ! start_keychain; then
  log "gnome-keyring did not come up on a private session bus (tests/setup/keyring.sh installs it)"
  record_failure "end-to-end (no keychain)"
  run_e2e=false
fi
if $run_e2e; then
  log "end-to-end test in code-server"
  e2e_started_at=$(date +%s)
  SANDLINK_VSIX="$extension_dir/sandlink.vsix" SANDLINK_SERVER_BINARY="$server_binary" \
    node "$repo_root/tests/vscode/e2e.mjs" 2>&1 | tee "$scratch/e2e.txt"
  e2e_status=${PIPESTATUS[0]}
  e2e_seconds=$(($(date +%s) - e2e_started_at))
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$scratch/e2e.txt" | tail -1)
  if [[ -n "$counts" ]]; then
    passed=$((passed + $(cut -d' ' -f1 <<<"$counts")))
    failed=$((failed + $(cut -d' ' -f3 <<<"$counts")))
  fi
  if ((e2e_status != 0)); then
    failed_parts+=("end-to-end")
    [[ -z "$counts" ]] && failed=$((failed + 1))
  fi
fi

log "unit tests and packaging: ${unit_and_package_seconds} s; end-to-end: ${e2e_seconds} s"
if ((${#failed_parts[@]} > 0)); then
  log "failed: ${failed_parts[*]}"
fi
echo "${passed} passed, ${failed} failed"
((failed == 0 && ${#failed_parts[@]} == 0))
