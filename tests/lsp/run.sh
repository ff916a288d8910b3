#!/usr/bin/env bash
# Runs the pytest-lsp tests against the built binary, using the repo's .venv (made by tests/setup/python.sh).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
exec .venv/bin/python -m pytest -q tests/lsp "$@"
