#!/usr/bin/env bash
# Builds the MAP with `monai-deploy package` (see scripts/package_map.py). Where no Docker engine
# runs, pass --context-only: the packager's Dockerfile and build context are kept in build/map/context.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/package_map.py "$@"
