#!/bin/sh
# Attach from offset 0 of a 100 MB detached log on the local driver: the time until `sandlink logs --follow` has
# printed the last byte, against `cat` of the same file in the same run. Usage: bench/detached/attach.sh [SANDLINK]
# Measured on the 2-core CI machine under load (release build): 0.08-0.10 s against cat's 0.025 s, 3.1-3.8x; the
# attach includes starting sandlink and its runtime (about 20 ms) and UTF-8 checks of every byte.
set -eu
sandlink=${1:-target/debug/sandlink}
state=$(mktemp -d)
workspace=$(mktemp -d)
trap 'rm -rf "$state" "$workspace"' EXIT
export SANDLINK_STATE_DIR="$state"
run=$("$sandlink" run --detach --driver local --workspace "$workspace" -- 'yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c 100000000' 2>/dev/null)
"$sandlink" attach "$run" >/dev/null
log=$(find "$state/sessions" -path "*/runs/$run/out")
size=$(wc -c <"$log")
now() { date +%s.%N; }
start=$(now); cat "$log" >/dev/null; end=$(now)
cat_seconds=$(echo "$end - $start" | bc)
"$sandlink" logs --follow "$run" >"$state/copy"
cmp -s "$log" "$state/copy" || { echo "the attached copy differs from the log" >&2; exit 1; }
start=$(now); "$sandlink" logs --follow "$run" >/dev/null; end=$(now)
attach_seconds=$(echo "$end - $start" | bc)
echo "log: $size bytes"
echo "cat:            ${cat_seconds} s"
echo "attach from 0:  ${attach_seconds} s"
echo "ratio: $(echo "scale=1; $attach_seconds / $cat_seconds" | bc)x"
