#!/usr/bin/env bash
# Installs the built OHIF viewer used by the viewer acceptance test (tests/test_viewer_ohif.py):
# the npm package @ohif/app at a pinned version, whose dist/ folder is the compiled viewer. Only the
# package's own tarball is fetched (`npm pack`, checked against the pinned integrity); its npm
# dependencies are not needed to serve dist/. Result: build/ohif/app-<version>/dist/index.html.
# Idempotent: nothing is fetched when that version is already there.
# Exit codes: 0 ok, 3 npm missing or the registry cannot be reached (the test then skips, saying so).
set -euo pipefail
cd "$(dirname "$0")/.."

OHIF_VERSION="3.13.2"  # keep equal to tests/ohif_viewer.py OHIF_VERSION
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
dest="build/ohif/app-${OHIF_VERSION}"

if [ -f "$dest/dist/index.html" ] && [ "$(cat "$dest/.integrity" 2>/dev/null)" = "$OHIF_INTEGRITY" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "[install_ohif] npm is not installed; cannot fetch @ohif/app ${OHIF_VERSION}" >&2
  exit 3
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/lnmet-ohif.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "[install_ohif] fetching @ohif/app@${OHIF_VERSION} (npm pack)"
if ! (cd "$work" && npm pack --silent "@ohif/app@${OHIF_VERSION}" >/dev/null); then
  echo "[install_ohif] 'npm pack @ohif/app@${OHIF_VERSION}' failed" >&2
  exit 3
fi
tarball="$work/ohif-app-${OHIF_VERSION}.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$OHIF_INTEGRITY" ]; then
  echo "[install_ohif] integrity mismatch for @ohif/app@${OHIF_VERSION}: got $got, expected $OHIF_INTEGRITY" >&2
  exit 1
fi
mkdir -p "$work/x"
tar -xzf "$tarball" -C "$work/x"
[ -f "$work/x/package/dist/index.html" ] || { echo "[install_ohif] the package has no dist/index.html" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/x/package" "$dest"
echo "$OHIF_INTEGRITY" > "$dest/.integrity"
echo "[install_ohif] OHIF ${OHIF_VERSION} viewer in $dest/dist"
