#!/usr/bin/env bash
# ssh driver benchmarks against plain OpenSSH over an open ControlMaster, in the same run (bench/ssh/main.rs):
# run round trip of `true`, initial sync vs `tar -c | ssh host tar -x`, unchanged resync vs `ssh host true` plus
# `git status`, save-to-visible. Starts the test sshd first (tests/setup/ssh.sh) and reads tests/.run/ssh.env.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash tests/setup/ssh.sh
set -a
# shellcheck disable=SC1091
. tests/.run/ssh.env
set +a
exec cargo bench --locked -p sandlink --bench ssh "$@"
