#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a fixed time from its checked-in seeds; fails on any crash.
#
# SANDLINK_FUZZ_SECONDS (default 54) is the time per target; SANDLINK_FUZZ_TARGETS (default: all) picks targets.
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz when it is missing.
# A crash leaves its input in fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root/fuzz"
seconds="${SANDLINK_FUZZ_SECONDS:-54}"
# Safe Rust under test: the properties are panics, escapes and round trips, so no sanitizer (several times the
# executions per second); debug assertions on, so overflows are caught as well.
build_flags=(--sanitizer none --debug-assertions)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "--- installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets="${SANDLINK_FUZZ_TARGETS:-$(cargo +nightly fuzz list | tr '\n' ' ')}"
echo "--- building the fuzz targets: $targets"
cargo +nightly fuzz build "${build_flags[@]}"

failed=()
for target in $targets; do
    corpus="corpus/$target"
    mkdir -p "$corpus" "artifacts/$target"
    options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "$target.dict" ] && options+=(-dict="$target.dict")
    echo "--- fuzzing $target for $seconds s"
    # The grown corpus (gitignored) comes first so later runs continue where earlier ones stopped; seeds are read only.
    if ! cargo +nightly fuzz run "${build_flags[@]}" "$target" "$corpus" "seeds/$target" -- "${options[@]}"; then
        failed+=("$target")
        echo "--- $target FAILED; the crashing input is in fuzz/artifacts/$target/" >&2
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi
echo "every fuzz target ran ${seconds} s without a crash: $targets"
