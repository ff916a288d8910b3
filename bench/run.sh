#!/usr/bin/env bash
# Builds the release binary and runs the named benchmarks (all when none are named).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
cargo build --release --locked -p sandlink >&2
benchmarks=("$@")
[ "${#benchmarks[@]}" -gt 0 ] || benchmarks=(foundation persistence)
for benchmark in "${benchmarks[@]}"; do
    echo "== $benchmark"
    case "$benchmark" in
        foundation) python3 bench/foundation.py target/release/sandlink ;;
        persistence) python3 bench/persistence.py target/release/sandlink ;;
        isolation) python3 bench/isolation.py target/release/sandlink ;;
        docker) cargo bench --locked -p sandlink --bench docker ;;
        ssh) bash bench/ssh.sh ;;
        *) if [ -x "bench/$benchmark/run.sh" ]; then bash "bench/$benchmark/run.sh"; else echo "unknown benchmark $benchmark" >&2; exit 2; fi ;;
    esac
done
