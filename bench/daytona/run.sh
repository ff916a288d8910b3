#!/usr/bin/env bash
# Runs the Daytona request/latency benchmark (sandlink's daytona driver vs the official SDK, same fake) with the test venv.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$repo_root/tests/setup/python.sh"
binary="${SANDLINK_BINARY:-${CARGO_TARGET_DIR:-$repo_root/target}/debug/sandlink}"
exec "$repo_root/.venv/bin/python" "$repo_root/bench/daytona/bench.py" --sandlink "$binary" "$@"
