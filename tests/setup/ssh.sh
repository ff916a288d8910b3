#!/usr/bin/env bash
# Installs OpenSSH and starts two real sshd on loopback for the ssh driver's tests; idempotent and fast when done.
#
# 127.0.0.1:2222 is the target and 127.0.0.1:2223 the jump host; both let only the unprivileged user `sandlinkssh`
# in, with the test key and nothing else. Keys, the sshd configurations and a client configuration (an alias for the
# target, an alias that reaches it through the jump host with ProxyJump, pulled in through an Include, and a
# known_hosts file of its own) live under tests/.run/ssh/. Tests read tests/.run/ssh.env. ssh reads the home of the
# passwd entry, not $HOME, so the tests pass the configuration with -F (the driver's `configFile` setting).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
run_directory="$repo_root/tests/.run"
ssh_directory="$run_directory/ssh"
test_user="sandlinkssh"
target_port=2222
jump_port=2223
mkdir -p "$ssh_directory"
# sshd reads authorized_keys as the test user: the directory is traversable, the private keys stay root's.
chmod 711 "$ssh_directory"

install_packages() {
    local missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/setup/ssh.sh: missing ${missing[*]}; install them (Debian: apt-get install openssh-server openssh-client)" >&2
        exit 1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

make_user() {
    if ! id "$test_user" >/dev/null 2>&1; then
        useradd -m -s /bin/sh "$test_user"
    fi
    # A new user is locked (`!` in shadow), which sshd refuses even for key login; `*` allows keys, never a password.
    usermod -p '*' "$test_user"
}

make_keys() {
    for name in host_target host_jump host_other client wrong_client; do
        [ -f "$ssh_directory/$name" ] || ssh-keygen -q -t ed25519 -N '' -C "sandlink-test-$name" -f "$ssh_directory/$name"
    done
    # The directory is root's; the client keys are read by the client (root in the tests) only.
    chmod 600 "$ssh_directory"/host_* "$ssh_directory"/client "$ssh_directory"/wrong_client
    cp "$ssh_directory/client.pub" "$ssh_directory/authorized_keys"
    chmod 644 "$ssh_directory/authorized_keys"
}

write_sshd_config() {
    local name=$1 port=$2 host_key=$3
    cat >"$ssh_directory/sshd_$name.conf" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $ssh_directory/$host_key
PidFile $ssh_directory/sshd_$name.pid
AuthorizedKeysFile $ssh_directory/authorized_keys
AllowUsers $test_user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
PermitRootLogin no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
EOF
}

sshd_running() {
    local pid_file="$ssh_directory/sshd_$1.pid"
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# The test sshd of another checkout of this repository (a CI clone beside a working copy) holds the same loopback
# port with other keys; it is stopped so this checkout's own can listen. Nothing but these test daemons matches.
stop_other_checkouts_sshd() {
    local name=$1 pid
    for pid in $(pgrep -f "sshd -f .*/tests/\.run/ssh/sshd_$name\.conf" 2>/dev/null); do
        if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ssh_directory/sshd_$name.conf"; then
            echo "tests/setup/ssh.sh: stopping another checkout's test sshd ($name, pid $pid) that holds its port" >&2
            kill "$pid" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 50); do
        pgrep -f "sshd -f .*/tests/\.run/ssh/sshd_$name\.conf" 2>/dev/null | while read -r pid; do
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ssh_directory/sshd_$name.conf" || echo "$pid"
        done | grep -q . || return 0
        sleep 0.1
    done
}

start_sshd() {
    local name=$1 port=$2
    if sshd_running "$name"; then
        return
    fi
    stop_other_checkouts_sshd "$name"
    mkdir -p /run/sshd
    /usr/sbin/sshd -f "$ssh_directory/sshd_$name.conf" -E "$ssh_directory/sshd_$name.log"
    for _ in $(seq 1 100); do
        if sshd_running "$name" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.05
    done
    echo "tests/setup/ssh.sh: sshd ($name) did not start on 127.0.0.1:$port; see $ssh_directory/sshd_$name.log" >&2
    tail -n 20 "$ssh_directory/sshd_$name.log" >&2
    exit 1
}

write_client_config() {
    # The known hosts, as a user who has connected before would have them.
    {
        printf '[127.0.0.1]:%s %s\n' "$target_port" "$(cut -d' ' -f1,2 "$ssh_directory/host_target.pub")"
        printf '[127.0.0.1]:%s %s\n' "$jump_port" "$(cut -d' ' -f1,2 "$ssh_directory/host_jump.pub")"
    } >"$ssh_directory/known_hosts"
    cat >"$ssh_directory/hosts.conf" <<EOF
# Included by config: the aliases a user would write.
Host sandlink-target
    HostName 127.0.0.1
    Port $target_port
    User $test_user

Host sandlink-jump
    HostName 127.0.0.1
    Port $jump_port
    User $test_user

Host sandlink-via-jump
    HostName 127.0.0.1
    Port $target_port
    User $test_user
    ProxyJump sandlink-jump
EOF
    cat >"$ssh_directory/config" <<EOF
Include $ssh_directory/hosts.conf

Host *
    IdentityFile $ssh_directory/client
    IdentitiesOnly yes
    UserKnownHostsFile $ssh_directory/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    ConnectTimeout 5
EOF
    chmod 600 "$ssh_directory/config" "$ssh_directory/hosts.conf"
}

# Sessions the tests' servers kept on exit leave their folders on the "remote"; with nothing of the test user's
# running, none of them is in use, so a new test run starts from an empty cache.
clean_kept_folders() {
    # Zombies (exited, waiting for a parent that never reaps them in a container without an init) do not count.
    if ! ps -u "$test_user" -o stat= 2>/dev/null | grep -qv '^Z'; then
        rm -rf "/home/$test_user/.cache/sandlink"
    fi
}

install_packages
make_user
clean_kept_folders
make_keys
write_sshd_config target "$target_port" host_target
write_sshd_config jump "$jump_port" host_jump
start_sshd target "$target_port"
start_sshd jump "$jump_port"
[ -f "$ssh_directory/config" ] || write_client_config
if ! ssh -F "$ssh_directory/config" -o BatchMode=yes sandlink-via-jump true; then
    echo "tests/setup/ssh.sh: the test user cannot log in through the jump host; see $ssh_directory/sshd_*.log" >&2
    exit 1
fi
cat >"$run_directory/ssh.env" <<EOF
SANDLINK_SSH_CONFIG=$ssh_directory/config
SANDLINK_SSH_HOST=sandlink-target
SANDLINK_SSH_JUMP_HOST=sandlink-via-jump
SANDLINK_SSH_USER=$test_user
SANDLINK_SSH_PORT=$target_port
SANDLINK_SSH_JUMP_PORT=$jump_port
SANDLINK_SSH_DIR=$ssh_directory
SANDLINK_SSH_SSHD_CONFIG=$ssh_directory/sshd_target.conf
SANDLINK_SSH_SSHD_PID=$ssh_directory/sshd_target.pid
EOF
