#!/usr/bin/env bash
# The README's main job: set up the project, generate one `standard` two-phase study (512x512,
# 200 slices; skipped when already there) and run the application on it with the bundled models.
#
#   bash scripts/run_main.sh            # study in output/sample_study, results in output/results
#   SEED=100001 bash scripts/run_main.sh  # another study (seeds >= 100000 were never trained on)
#
# The results folder is replaced by each run (the application writes it atomically at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-1}
STUDY_ROOT=output/sample_study
RESULTS=output/results

bash scripts/setup.sh
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack

case_dir=$(find "$STUDY_ROOT" -mindepth 1 -maxdepth 1 -type d -exec test -d '{}/dicom' ';' -print 2>/dev/null | sort | head -n 1 || true)
if [ -z "$case_dir" ]; then
  echo "[main] generating a standard two-phase study (seed $SEED) in $STUDY_ROOT"
  .venv/bin/python -m synthetic generate --preset standard --seed "$SEED" --count 1 --out "$STUDY_ROOT"
  case_dir=$(find "$STUDY_ROOT" -mindepth 1 -maxdepth 1 -type d -exec test -d '{}/dicom' ';' -print | sort | head -n 1)
else
  echo "[main] using the study already in $case_dir"
fi
[ -n "$case_dir" ] || { echo "[main] ERROR: no study with a dicom/ folder in $STUDY_ROOT" >&2; exit 1; }

rm -rf "$RESULTS"
echo "[main] running: python app -i $case_dir/dicom -o $RESULTS -m models"
.venv/bin/python app -i "$case_dir/dicom" -o "$RESULTS" -m models

echo
echo "[main] done. Outputs for $(basename "$case_dir") in $RESULTS/:"
find "$RESULTS" -type f | sort | sed 's/^/  /'
echo "[main] ground truth of the study (labels, LN table, patient label): $case_dir/ground_truth/"
