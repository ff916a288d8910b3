#!/usr/bin/env bash
# 1 GiB of output through sandlink against the same command piped to `cat > /dev/null` (see bench.py).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
cargo build --release --locked -p sandlink >&2
python3 bench/output/bench.py "${CARGO_TARGET_DIR:-target}/release/sandlink"
