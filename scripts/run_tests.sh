#!/usr/bin/env bash
# Sets up the project (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack
exec .venv/bin/python -m pytest -q "$@"
