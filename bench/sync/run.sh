#!/usr/bin/env bash
# Sync benchmarks on the local driver: builds the release server and prints each figure with its baseline ratio.
# Usage: bench/sync/run.sh [--files N] [--megabytes M] [--rounds R] [--saves S] [--work DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
cargo build --release -p sandlink --manifest-path "$repo/Cargo.toml" >&2
exec python3 "$here/bench.py" --binary "$target/release/sandlink" "$@"
