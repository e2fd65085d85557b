#!/usr/bin/env bash
# Builds the MAP image on this machine, offline, with the SDK's packager (see scripts/map_image.py):
# a local Debian 12 base image, a wheelhouse of the pinned runtime dependencies made on the host,
# `monai-deploy package` for the Dockerfile and context, a BuildKit build without network.
# Options: --cold (nothing cached), --no-cache, --keep-engine (leave a dockerd started here running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/map_image.py build "$@"
