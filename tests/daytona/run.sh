#!/usr/bin/env bash
# Runs the Daytona fake-server conformance suite (official daytona SDK + raw wire checks + faults) with the repo's Python venv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Under CI a missing Python or package must fail the run, and setup exits non-zero when it cannot install them.
"$repo_root/tests/setup/python.sh"
cd "$repo_root"
# Other suites share the venv; their pytest plugins (pytest-asyncio) have no business in this one.
exec "$repo_root/.venv/bin/python" -m pytest -q -p no:asyncio -p no:cacheprovider tests/daytona "$@"
