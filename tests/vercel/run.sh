#!/usr/bin/env bash
# Runs the Vercel fake-server suite: the official @vercel/sandbox SDK against it (Node), then raw wire and fault checks (pytest).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
suite_dir="$repo_root/tests/vercel"
# Under CI a missing Python or package must fail the run, and setup exits non-zero when it cannot install them.
"$repo_root/tests/setup/python.sh"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tests/vercel/run.sh: node and npm are needed for the SDK conformance test (Debian: apt-get install -y nodejs npm)" >&2
    exit 1
fi
# npm ci only when node_modules is missing or older than the lock file, so repeated runs cost nothing.
installed_marker="$suite_dir/node_modules/.package-lock.json"
if [ ! -f "$installed_marker" ] || [ "$suite_dir/package-lock.json" -nt "$installed_marker" ]; then
    echo "tests/vercel/run.sh: installing the SDK (npm ci)" >&2
    (cd "$suite_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

cd "$repo_root"
# Both parts run even when the first fails, so one run shows every problem; either failing fails the suite.
echo "tests/vercel/run.sh: official SDK conformance (node tests/vercel/sdk_conformance.mjs)" >&2
sdk_status=0
SANDLINK_TEST_PYTHON="$repo_root/.venv/bin/python" VERCEL_TELEMETRY_DISABLED=1 node "$suite_dir/sdk_conformance.mjs" || sdk_status=$?
echo "tests/vercel/run.sh: wire format and faults (pytest tests/vercel)" >&2
pytest_status=0
# Other suites share the venv; their pytest plugins (pytest-asyncio) have no business in this one.
"$repo_root/.venv/bin/python" -m pytest -q -p no:asyncio -p no:cacheprovider tests/vercel "$@" || pytest_status=$?
if [ "$sdk_status" -ne 0 ] || [ "$pytest_status" -ne 0 ]; then
    echo "tests/vercel/run.sh: failed (SDK conformance: exit $sdk_status, pytest: exit $pytest_status)" >&2
    exit 1
fi
