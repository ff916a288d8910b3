#!/usr/bin/env bash
# sandlink's sync and start-up against the tools a user could use instead (tar, rsync, unison, git status, bwrap,
# docker exec), measured in one run; see bench.py. Installs rsync and unison first when they are missing.
# Usage: bench/peers/run.sh [BINARY (default target/release/sandlink)] [bench.py options: --rounds R --places shm,disk ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary="${CARGO_TARGET_DIR:-$repo/target}/release/sandlink"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    binary="$1"
    shift
fi
[ -x "$binary" ] || { echo "no sandlink binary at $binary (build it: nice -n 19 cargo build --release -p sandlink)" >&2; exit 2; }

missing=()
command -v rsync >/dev/null || missing+=(rsync)
command -v unison >/dev/null || missing+=(unison)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get (the peers this benchmark measures against) ..." >&2
    sudo_if_needed=()
    [ "$(id -u)" -eq 0 ] || sudo_if_needed=(sudo)
    "${sudo_if_needed[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo_if_needed[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

# The Docker rows need the test daemon (tests/setup/docker.sh); its address is in tests/.run/docker.env when set up.
if [ -z "${DOCKER_HOST:-}" ]; then
    for env_file in "$repo/tests/.run/docker.env" /work/main/tests/.run/docker.env; do
        if [ -f "$env_file" ]; then
            set -a
            # shellcheck disable=SC1090
            . "$env_file"
            set +a
            break
        fi
    done
fi

echo "load before the run: $(uptime)" >&2
exec python3 "$here/bench.py" --binary "$binary" "$@"
