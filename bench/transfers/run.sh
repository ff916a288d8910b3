#!/usr/bin/env bash
# Runs the transfers benchmark (bytes to upload the benchmark tree to each cloud test server) with the test venv.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$repo_root/tests/setup/python.sh"
binary="${SANDLINK_BINARY:-${CARGO_TARGET_DIR:-$repo_root/target}/debug/sandlink}"
exec "$repo_root/.venv/bin/python" "$repo_root/bench/transfers/bench.py" --sandlink "$binary" "$@"
