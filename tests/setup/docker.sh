#!/usr/bin/env bash
# Installs and starts a real Docker engine and builds the local test image; idempotent and fast when already done.
#
# No image registry is reachable from CI, so the test image is made here from Debian's static busybox with
# `docker import` (no build step, no base image). dockerd keeps its data under a cache directory of its own, so a
# shared machine's other Docker data is never touched. Tests read tests/.run/docker.env.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
run_directory="$repo_root/tests/.run"
cache_directory="${SANDLINK_CI_CACHE:-/var/lib/sandlink-ci}"
data_root="$cache_directory/docker"
daemon_log="$cache_directory/dockerd.log"
test_image="sandlink-test:busybox"
mkdir -p "$run_directory" "$cache_directory"

# The daemon answers on DOCKER_HOST when set, else on the default socket.
docker_host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
export DOCKER_HOST="$docker_host"

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nc || missing+=(busybox-static)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/setup/docker.sh: missing ${missing[*]}; install them (Debian: apt-get install docker.io busybox-static iptables)" >&2
        exit 1
    fi
    # The package lists are fetched only when the install fails without them (a fresh machine has none).
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

daemon_ready() {
    docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1
}

start_daemon() {
    if daemon_ready; then
        return
    fi
    mkdir -p "$data_root"
    local socket_path="${docker_host#unix://}"
    # A daemon that died leaves its pid file and socket behind; dockerd refuses to start over a live pid file only.
    rm -f "$socket_path"
    nohup dockerd --data-root "$data_root" --host "$docker_host" --pidfile "$cache_directory/dockerd.pid" \
        --exec-root "$cache_directory/exec" >"$daemon_log" 2>&1 &
    for _ in $(seq 1 200); do
        if daemon_ready; then
            return
        fi
        sleep 0.05
    done
    echo "tests/setup/docker.sh: dockerd did not become ready within 10 s; see $daemon_log:" >&2
    tail -n 20 "$daemon_log" >&2
    exit 1
}

build_test_image() {
    if docker image inspect "$test_image" >/dev/null 2>&1; then
        return
    fi
    local rootfs
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' RETURN
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/workspace" "$rootfs/root" "$rootfs/etc" "$rootfs/home/sandlink"
    chmod 1777 "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nsandlink:x:1000:1000:sandlink:/home/sandlink:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nsandlink:x:1000:\n' >"$rootfs/etc/group"
    chown 1000:1000 "$rootfs/home/sandlink"
    tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$test_image" >/dev/null
}

# A second image with git in it for the agent-task tests (clone, commit and bundle happen in the sandbox): the
# busybox image plus this machine's git binary and the libraries it links, again imported without a registry.
git_test_image="sandlink-test:git"
build_git_test_image() {
    if docker image inspect "$git_test_image" >/dev/null 2>&1; then
        return
    fi
    local git_binary rootfs library
    git_binary="$(command -v git)" || { echo "tests/setup/docker.sh: git is needed for $git_test_image" >&2; exit 1; }
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' RETURN
    docker create --name sandlink-git-image-base "$test_image" >/dev/null
    docker export sandlink-git-image-base | tar -C "$rootfs" -x
    docker rm sandlink-git-image-base >/dev/null
    mkdir -p "$rootfs/usr/bin"
    cp "$git_binary" "$rootfs/usr/bin/git"
    for library in $(ldd "$git_binary" | awk '/=>/ { print $3 } /^[[:space:]]*\// { print $1 }'); do
        mkdir -p "$rootfs$(dirname "$library")"
        cp -L "$library" "$rootfs$library"
    done
    tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/bin:/bin' - "$git_test_image" >/dev/null
}

install_packages
start_daemon
build_test_image
build_git_test_image
echo "DOCKER_HOST=$docker_host" >"$run_directory/docker.env"
