#!/usr/bin/env bash
# Sets up the project on a fresh machine (Python 3.11 + Debian): a virtual environment in .venv with the
# pinned packages of requirements.txt (runtime), requirements-cohort.txt (the cohort command's Ray and
# pyarrow) and requirements-dev.txt (test tools), the Debian tools the tests use (dicom3tools for
# dciodvfy, dcmtk, Orthanc as a loopback PACS with its DICOMweb plugin, poppler-utils for pdftoppm,
# chromium for the OHIF viewer test, the fonts the PDF report uses for non-Latin names), and the OHIF
# viewer build (npm @ohif/app, pinned, scripts/install_ohif.sh). Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-cohort.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating .venv and installing requirements.txt, requirements-cohort.txt, requirements-dev.txt"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first and pinned, so that no other package pulls a CUDA build.
  .venv/bin/python -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# Debian tools used by tests (skipped where already present; needs root or sudo).
need=()
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || need+=(orthanc-dicomweb)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Unicode fonts for non-Latin names in the PDF report (lnmet/reporting/pdf_text.py; optional at run time).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || need+=(fonts-droid-fallback)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  echo "[setup] installing Debian packages: ${need[*]}"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
    echo "[setup] WARNING: could not install ${need[*]}; the tests that need them will be skipped with a message" >&2
  fi
fi
# The OHIF viewer build for the browser test (only the package's tarball; skipped when present).
bash scripts/install_ohif.sh || echo "[setup] WARNING: the OHIF viewer could not be installed; the viewer test will be skipped with a message" >&2
echo "[setup] ready: $(.venv/bin/python --version), $(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)' 2>/dev/null)"
