#!/usr/bin/env bash
# Runs the headless Neovim tests of neovim-plugin against the real `sandlink lsp` binary; prints "N passed, N failed".
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ci=${CI:-}

fail_or_skip() {
  # Outside CI a missing component skips the suite; under CI it is a failure (style.md, habit 8).
  if [ "$ci" = "true" ] || [ "$ci" = "1" ]; then
    echo "$1" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "skipping the Neovim tests: $1" >&2
  echo "0 passed, 0 failed"
  exit 0
}

command -v nvim >/dev/null 2>&1 || fail_or_skip "nvim is not installed (tests/setup/neovim.sh installs it)"

server_binary=${SANDLINK_BIN:-$repo/target/debug/sandlink}
if [ ! -x "$server_binary" ]; then
  (cd "$repo" && cargo build --quiet --bin sandlink) || fail_or_skip "the server binary could not be built"
fi
[ -x "$server_binary" ] || fail_or_skip "no server binary at $server_binary"

scratch=$(mktemp -d)
private_keychain_pids=()
trap 'kill "${private_keychain_pids[@]}" 2>/dev/null; rm -rf "$scratch"' EXIT

# A private Secret Service, so the connect flow that stores a missing key works as on a desktop; and the `keyed`
# test driver (the local driver plus a required key), so that flow can be tried without a cloud.
# shellcheck source=tests/setup/private-keychain.sh
. "$repo/tests/setup/private-keychain.sh"
start_private_keychain "$scratch/keychain" || fail_or_skip "gnome-keyring did not come up on a private session bus (tests/setup/keyring.sh installs it)"
export SANDLINK_TEST_DRIVERS=1

# A fresh workspace and state dir per Neovim version, since the tests edit files and make sessions.
make_workspace() {
  local workspace=$1
  mkdir -p "$workspace"
  printf 'hello from the workspace\n' > "$workspace/hello.txt"
  # The task leaves a marker in the sandbox, so the tests see from the server's side whether it ran.
  printf '[tasks]\ngreet = "echo hello from a task; echo ran > task-ran.txt"\n' > "$workspace/.sandlink.toml"
}

# One Neovim run per version; each prints its own totals, and the last line here is the sum.
run_suite() {
  local label=$1; shift
  local log="$scratch/$label.log"
  local workspace="$scratch/$label/workspace"
  make_workspace "$workspace"
  mkdir -p "$scratch/$label/state" "$scratch/$label/home"
  echo "== Neovim tests ($label)"
  (cd "$workspace" && \
    SANDLINK_TEST_REPO="$repo" SANDLINK_BIN="$server_binary" SANDLINK_TEST_WORKSPACE="$workspace" \
    SANDLINK_STATE_DIR="$scratch/$label/state" XDG_STATE_HOME="$scratch/$label/home/state" \
    XDG_DATA_HOME="$scratch/$label/home/data" XDG_CONFIG_HOME="$scratch/$label/home/config" \
    XDG_CACHE_HOME="$scratch/$label/home/cache" \
    timeout 300 "$@" --headless --clean -u NONE -i NONE -c "luafile $repo/tests/neovim/main.lua" \
    </dev/null >"$log" 2>&1)
  local status=$?
  # The summary line is re-printed below as part of the total, not here.
  grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$log"
  local summary
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
  if [ -z "$summary" ]; then
    echo "Neovim ($label) ended without a summary (exit status $status)"
    summary="0 passed, 1 failed"
  elif [ "$status" -ne 0 ] && [ "${summary##*, }" = "0 failed" ]; then
    echo "Neovim ($label) exited with status $status"
    summary="${summary%%,*}, 1 failed"
  fi
  total_passed=$((total_passed + ${summary%% passed*}))
  local failed_part=${summary##*, }
  total_failed=$((total_failed + ${failed_part%% failed}))
}

total_passed=0
total_failed=0
run_suite debian nvim

# Newer Neovims too: trixie's 0.10 and sid's current release, from the debootstrap roots tests/setup/neovim.sh makes.
newer_roots=${SANDLINK_NEOVIM_ROOTS:-/var/cache/sandlink/trixie-neovim /var/cache/sandlink/sid-neovim}
if [ -n "${SANDLINK_SKIP_CURRENT_NEOVIM:-}" ]; then
  echo "skipping the newer Neovims: SANDLINK_SKIP_CURRENT_NEOVIM is set" >&2
else
  for newer_root in $newer_roots; do
    if [ -x "$newer_root/usr/bin/nvim" ]; then
      SANDLINK_NEOVIM_ROOT="$newer_root" run_suite "$(basename "$newer_root")" "$repo/tests/neovim/current-nvim.sh"
    elif [ "$ci" = "true" ] || [ "$ci" = "1" ]; then
      echo "no Neovim at $newer_root (tests/setup/neovim.sh makes it)"
      total_failed=$((total_failed + 1))
    else
      echo "skipping the Neovim at $newer_root: not there (tests/setup/neovim.sh makes it)" >&2
    fi
  done
fi

echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
