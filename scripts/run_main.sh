#!/usr/bin/env bash
# The README's main job: set up the project, generate one `standard` two-phase study (512x512,
# 200 slices; skipped when already there) and run the application on it with the bundled models.
#
#   bash scripts/run_main.sh              # study in output/sample_study, results in output/results
#   SEED=100002 bash scripts/run_main.sh  # another study (seeds >= 100000 were never trained on)
#
# The results folder is replaced by each run (the application writes it atomically at the end).
# The default study (seed 100001) is a held-out one: no model was trained on it.
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-100001}
STUDY_ROOT=output/sample_study
RESULTS=output/results

bash scripts/setup.sh
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack

case_dir="$STUDY_ROOT/$(printf 'SYN%06d' "$SEED")"
current=$(.venv/bin/python -c 'from synthetic import GENERATOR_VERSION; print(GENERATOR_VERSION)')
made_by=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("generator_version", "?"))' \
          "$case_dir/ground_truth/study.json" 2>/dev/null || echo none)
if [ -d "$case_dir" ] && [ "$made_by" != "$current" ]; then
  echo "[main] the study in $case_dir was made by generator $made_by, not $current: generating it again"
  rm -rf "$case_dir"
fi
if [ ! -d "$case_dir/dicom" ]; then
  echo "[main] generating a standard two-phase study (seed $SEED) in $case_dir"
  .venv/bin/python -m synthetic generate --preset standard --seed "$SEED" --count 1 --out "$STUDY_ROOT"
else
  echo "[main] using the study already in $case_dir"
fi

echo "[main] running: python app -i $case_dir/dicom -o $RESULTS -m models"
.venv/bin/python app -i "$case_dir/dicom" -o "$RESULTS" -m models

echo
echo "[main] done. Outputs for $(basename "$case_dir") in $RESULTS/:"
find "$RESULTS" -type f | sort | sed 's/^/  /'
.venv/bin/python - "$RESULTS/results.json" "$case_dir/ground_truth/study.json" <<'PY'
import json, sys
res, gt = (json.load(open(p)) for p in sys.argv[1:3])
p = res["patient"]
prob = "n/a" if p.get("probability") is None else f"{p['probability']:.2f}"
if res.get("status") == "not_assessable":
    print(f"[main] NOT ASSESSABLE (quality gate): {res['quality_gate']['summary']}")
else:
    print(f"[main] predicted: {'metastasis' if p.get('positive') else 'no metastasis'} (probability {prob}, "
          f"threshold {p.get('threshold', float('nan')):.2f}); {len(res.get('lymph_nodes', []))} lymph node(s) found")
truth = gt["patient"]
print(f"[main] ground truth of this synthetic study: {'metastasis' if truth['metastasis_positive'] else 'no metastasis'}, "
      f"{truth['num_lymph_nodes']} labelled node(s), {truth['num_positive_lymph_nodes']} positive")
PY
echo "[main] ground truth (labels, LN table, patient label): $case_dir/ground_truth/"
