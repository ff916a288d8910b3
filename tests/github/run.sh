#!/usr/bin/env bash
# Runs the git and GitHub test servers' suites (real git over smart HTTP; the official PyGithub client) with the repo's Python venv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Under CI a missing Python or package must fail the run, and setup exits non-zero when it cannot install them.
"$repo_root/tests/setup/python.sh"
if ! command -v git >/dev/null 2>&1; then
    echo "tests/github/run.sh: git is not installed (the git test server runs git http-backend)" >&2
    exit 1
fi
cd "$repo_root"
# Other suites share the venv; their pytest plugins (pytest-asyncio) have no business in this one.
exec "$repo_root/.venv/bin/python" -m pytest -q -p no:asyncio -p no:cacheprovider tests/github "$@"
