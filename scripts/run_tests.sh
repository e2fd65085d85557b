#!/usr/bin/env bash
# Sets up the project (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
# The suite runs in one pytest-xdist worker per core (at most 4), a test file per worker at a time
# (--dist loadfile: a file's module fixtures, such as one app run shared by its tests, are built once).
# PDAC_LN_TEST_WORKERS=1 runs it in this process instead (e.g. to debug with pdb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack
workers="${PDAC_LN_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
[ "$workers" -le 4 ] || workers=4
if [ "$workers" -gt 1 ]; then
  exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
