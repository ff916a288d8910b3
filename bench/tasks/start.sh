#!/usr/bin/env bash
# `sandlink task start` of a ~500-file repository on the git test server (tests/fakes/git_server.py, real git over
# smart HTTP behind a token) to a ready task branch in a sandbox, against `git clone` of the same repository by hand,
# alternating in one run. Usage: bench/tasks/start.sh [SANDLINK_BINARY] [ROUNDS] [DRIVER]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
binary="${1:-$repo_root/target/release/sandlink}"
rounds="${2:-5}"
driver="${3:-local}"
python="${SANDLINK_TEST_PYTHON:-python3}"
server="${SANDLINK_GIT_FAKE_SERVER:-$repo_root/tests/fakes/git_server.py}"
token="bench-token-$$"
work="$(mktemp -d)"
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

mkfifo "$work/ready"
"$python" "$server" --port 0 --root "$work/repos" --token "$token" >"$work/ready" 2>"$work/server.log" &
server_pid=$!
port="$(head -n1 "$work/ready" | awk '{print $2}')"
curl -sf -X POST "http://127.0.0.1:$port/_admin/repos" -d '{"name": "acme/bench", "files": 500}' >/dev/null
url="http://127.0.0.1:$port/acme/bench.git"
askpass="$work/askpass"
printf '#!/bin/sh\ncase "$1" in Username*) echo x-access-token;; *) echo "$BENCH_TOKEN";; esac\n' >"$askpass"
chmod 700 "$askpass"

now() { date +%s.%N; }
seconds() { echo "$2 - $1" | bc; }
median() { sort -n | awk '{ values[NR] = $1 } END { if (NR % 2) print values[(NR + 1) / 2]; else printf "%.3f\n", (values[NR / 2] + values[NR / 2 + 1]) / 2 }'; }
: >"$work/clone.times"
: >"$work/task.times"
for round in $(seq 1 "$rounds"); do
    start="$(now)"
    BENCH_TOKEN="$token" GIT_ASKPASS="$askpass" git -c credential.helper= clone -q "$url" "$work/clone-$round"
    seconds "$start" "$(now)" >>"$work/clone.times"

    start="$(now)"
    SANDLINK_STATE_DIR="$work/state" GITHUB_TOKEN="$token" "$binary" task start "$url" --id "bench-$round" \
        --driver "$driver" --json >/dev/null 2>>"$work/task.log"
    seconds "$start" "$(now)" >>"$work/task.times"
    SANDLINK_STATE_DIR="$work/state" "$binary" task end "bench-$round" >/dev/null 2>>"$work/task.log"
done
clone_median="$(median <"$work/clone.times")"
task_median="$(median <"$work/task.times")"
echo "repository: 500 files over smart HTTP, $rounds rounds alternating, driver $driver (medians)"
echo "git clone by hand:   ${clone_median} s"
echo "sandlink task start: ${task_median} s (ratio $(echo "scale=2; $task_median / $clone_median" | bc)x)"
