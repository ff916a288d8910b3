#!/usr/bin/env bash
# Runs the E2B request/time benchmark (sandlink's e2b driver vs the official SDK, same fake) with the test venv.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$repo_root/tests/setup/python.sh"
binary="${SANDLINK_BINARY:-${CARGO_TARGET_DIR:-$repo_root/target}/debug/sandlink}"
exec "$repo_root/.venv/bin/python" "$repo_root/bench/e2b/bench.py" --sandlink "$binary" "$@"
