#!/usr/bin/env bash
# Creates the repo's Python test venv at .venv and installs every tests/requirements*.txt into it; idempotent and fast when done.
#
# Why a stamp file: pip takes seconds even when nothing changes, and this runs before every test suite that needs
# Python. The stamp holds a hash of all requirement files, so adding or editing one (any team may add theirs) reinstalls.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_directory="$repo_root/.venv"
stamp_file="$venv_directory/.requirements-stamp"

shopt -s nullglob
requirement_files=("$repo_root"/tests/requirements*.txt)
shopt -u nullglob
if [ "${#requirement_files[@]}" -eq 0 ]; then
    echo "tests/setup/python.sh: no tests/requirements*.txt found; nothing to install" >&2
    exit 1
fi

# Tell later test stages (scripts/test sources tests/.run/*.env) where the interpreter and the fakes are, so Rust tests
# can spawn e.g. `$SANDLINK_TEST_PYTHON $SANDLINK_E2B_FAKE_SERVER --port 0 ...` without guessing paths.
write_environment_file() {
    mkdir -p "$repo_root/tests/.run"
    {
        echo "SANDLINK_TEST_PYTHON=$venv_directory/bin/python"
        echo "SANDLINK_E2B_FAKE_SERVER=$repo_root/tests/fakes/e2b_server.py"
        echo "SANDLINK_DAYTONA_FAKE_SERVER=$repo_root/tests/fakes/daytona_server.py"
        echo "SANDLINK_VERCEL_FAKE_SERVER=$repo_root/tests/fakes/vercel_server.py"
        echo "SANDLINK_GIT_FAKE_SERVER=$repo_root/tests/fakes/git_server.py"
        echo "SANDLINK_GITHUB_FAKE_SERVER=$repo_root/tests/fakes/github_server.py"
    } > "$repo_root/tests/.run/python.env"
}

wanted_stamp="$(cat "${requirement_files[@]}" | sha256sum | cut -d' ' -f1) $(python3 --version 2>&1)"
if [ -x "$venv_directory/bin/python" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$wanted_stamp" ]; then
    write_environment_file
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "tests/setup/python.sh: python3 is not installed; install it (Debian: apt-get install -y python3 python3-venv)" >&2
    exit 1
fi

if [ ! -x "$venv_directory/bin/python" ]; then
    if ! python3 -m venv "$venv_directory" 2>/dev/null; then
        # Debian splits venv (ensurepip) into its own package; as root we can add it, otherwise say how.
        rm -rf "$venv_directory"
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            python_minor="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt-get install -y --no-install-recommends "python${python_minor}-venv" >&2 \
                || apt-get install -y --no-install-recommends python3-venv >&2
            python3 -m venv "$venv_directory"
        else
            echo "tests/setup/python.sh: python3 -m venv failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi

install_arguments=()
for requirement_file in "${requirement_files[@]}"; do
    install_arguments+=(-r "$requirement_file")
done
"$venv_directory/bin/python" -m pip install --quiet --disable-pip-version-check "${install_arguments[@]}"
echo "$wanted_stamp" > "$stamp_file"
write_environment_file
