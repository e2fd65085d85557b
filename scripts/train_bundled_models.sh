#!/usr/bin/env bash
# Reproduces every bundled model from scratch on the project's own synthetic studies. The generator
# is now 2.5.0; organ_seg 0.9.0 was fine-tuned from 0.7.0 on 2.5.0 studies (step organs_g25), 0.7.0 from
# 0.6.0 with the app's registration simulated (step organs_registered); 0.6.0 was fine-tuned on 2.3.0 studies (step organs_g23) from 0.5.0, which
# was fine-tuned on 2.2.0 ones (step organs_g22; the generator of commit 365d0b2) from 0.4.0, which
# was fine-tuned on 2.1.0 ones (step organs_g21; the generator of commit 61ea7c7), the other models
# were trained on 2.0.0 ones (the generator before commit e0b796d: check that out to reproduce them
# bit for bit; on newer studies the same commands train the same recipe on the newer anatomy):
# the training data, the five models in dependency order, the plain baseline of the LN ablation and
# the tumour-only patient classifier (used by the evaluations), then the model manifest, then the
# held-out figures every output quotes (30 held-out studies as the app runs, about 1.5 hours more).
# About 8-10 hours on a 2-core CPU (docs/TRAINING.md gives each step's time); add --device cuda to
# the training commands on a GPU. Steps whose output exists are skipped, so a stopped run resumes.
#
#     bash scripts/train_bundled_models.sh            # everything
#     STEP=organs bash scripts/train_bundled_models.sh   # one step: data organs organs_g21 organs_g22 organs_g23 organs_registered organs_g25 pdac ln ln_baseline ln_cls patient manifest heldout
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STEP=${STEP:-all}
want() { [ "$STEP" = all ] || [ "$STEP" = "$1" ]; }

if want data; then
  # Seeds 0-199 train the segmentation and node models, 200-279 the patient classifier; each case is
  # acquired at its own voxel size and coverage and resampled by the app's own code (synthetic/acquisition.py).
  for start in 0 50 100 150; do
    [ -f "data/nnunet/Dataset501_PancreasOrgans/labelsTr/SYN$(printf %06d $((start + 49))).nii.gz" ] ||
      $PY -m synthetic export-nnunet --seed $start --count 50 --preset train --out data/nnunet --workers 2 --acquisition random
  done
  [ -f data/nnunet_patients/Dataset501_PancreasOrgans/labelsTr/SYN000279.nii.gz ] ||
    $PY -m synthetic export-nnunet --seed 200 --count 80 --preset train --out data/nnunet_patients --workers 2 --acquisition random
fi

SEG="$PY -m training.train_segmentation --preset small --threads 1 --seed 0 --log-every 50"
if want organs && [ ! -f build/train/organ_seg.done ]; then
  # Leg 1 (a pilot on the first 50 cases), then leg 2 on 150 cases, resumed from leg 1's checkpoint.
  [ -f build/pilot/organ_seg/model.ts ] ||
    $SEG --dataset data/nnunet/Dataset501_PancreasOrgans --task organs --out build/pilot/organ_seg/model.ts \
        --name organ_seg --iterations 1000 --max-cases 50 --val-fraction 0.1 --val-max-cases 3 \
        --checkpoint build/checkpoints/organ_seg.pt
  $SEG --dataset data/nnunet/Dataset501_PancreasOrgans --task organs --out build/organ_seg_0.2.0/model.ts \
      --iterations 6000 --max-cases 150 --val-fraction 0.1 --val-max-cases 6 --model-version 0.2.0 \
      --name organ_seg --checkpoint build/checkpoints/organ_seg.pt --resume
  mkdir -p build/train && touch build/train/organ_seg.done
fi
# organ_finetune STEP DATA SOURCE LEG...: fine-tunes organ_seg from the SOURCE model on 22 cases of the
# current generator exported to DATA (2 held back), the venous phase alone in half the patches,
# learning rate 0.002. Each LEG is ITERATIONS[:VERSION:OUT], resumed from the previous leg's checkpoint.
organ_finetune() {
  local step=$1 data=$2 source=$3 leg=0 start iters version out
  shift 3
  [ -f "$data/Dataset501_PancreasOrgans/labelsTr/SYN000021.nii.gz" ] ||
    $PY -m synthetic export-nnunet --seed 0 --count 22 --preset train --acquisition random --out "$data" --workers 2
  start="--init-from $source"
  for spec in "$@"; do
    leg=$((leg + 1))
    IFS=: read -r iters version out <<< "$spec"
    if [ ! -f "build/train/organ_seg_${step}_leg$leg.done" ]; then
      $PY -m training.train_segmentation --dataset "$data/Dataset501_PancreasOrgans" --task organs --name organ_seg \
          --lr 0.002 --single-phase-fraction 0.5 --val-fraction 0.1 --val-max-cases 2 --threads 2 --seed 0 \
          --log-every 50 --checkpoint "build/checkpoints/organ_seg_$step.pt" $start --iterations "$iters" \
          ${version:+--model-version "$version"} --out "${out:-build/organ_seg_${step}_leg$leg/model.ts}"
      mkdir -p build/train && touch "build/train/organ_seg_${step}_leg$leg.done"
    fi
    start=--resume
  done
  touch "build/train/organ_seg_$step.done"
}
if want organs_g21 && [ ! -f build/train/organ_seg_g21.done ]; then
  # 0.2.0 on generator 2.1.0 cases: 300 iterations, resumed to 900 (0.3.0), resumed to 1800 (0.4.0).
  organ_finetune g21 data/nnunet_g21 build/organ_seg_0.2.0/model.ts \
      300 900:0.3.0:build/organ_seg_0.3.0/model.ts 1800:0.4.0:build/organ_seg_0.4.0/model.ts
fi
if want organs_g22 && [ ! -f build/train/organ_seg_g22.done ]; then
  # 0.4.0 on generator 2.2.0 cases (the spleen's broad upper pole): 600 iterations, resumed to 1200 (0.5.0).
  organ_finetune g22 data/nnunet_g22 build/organ_seg_0.4.0/model.ts 600 1200:0.5.0:build/organ_seg_0.5.0/model.ts
fi
if want organs_g23 && [ ! -f build/train/organ_seg_g23.done ]; then
  # 0.5.0 on generator 2.3.0 cases (the fundus against the spleen, the splenic flexure high): 600
  # iterations, resumed to 1200 (0.6.0).
  organ_finetune g23 data/nnunet_g23 build/organ_seg_0.5.0/model.ts 600 1200:0.6.0:build/organ_seg_0.6.0/model.ts
fi
# organ_registered STEP SOURCE COUNT DATA THREADS ITERATIONS VERSION OUT: fine-tunes organ_seg from SOURCE on COUNT
# cases of the current generator exported to DATA (one in ten held back) with the recipe of 0.7.0 and after:
# learning rate 0.002, the venous phase alone in half the patches, and in half of them the arterial
# channel warped and padded as the app's registration leaves it (misalign_probability).
organ_registered() {
  local step=$1 source=$2 count=$3 data=$4 threads=$5 iters=$6 version=$7 out=$8
  [ -f "$data/Dataset501_PancreasOrgans/labelsTr/SYN$(printf %06d $((count - 1))).nii.gz" ] ||
    $PY -m synthetic export-nnunet --seed 0 --count "$count" --preset train --acquisition random --out "$data" --workers 2
  $PY -m training.train_segmentation --dataset "$data/Dataset501_PancreasOrgans" --task organs --name organ_seg \
      --lr 0.002 --single-phase-fraction 0.5 --val-fraction 0.1 --val-max-cases 2 --threads "$threads" --seed 0 \
      --log-every 50 --checkpoint "build/checkpoints/organ_seg_$step.pt" --init-from "$source" --iterations "$iters" \
      --randomise misalign_probability=0.5 --model-version "$version" --out "$out"
  mkdir -p build/train && touch "build/train/organ_seg_$step.done"
}
if want organs_registered && [ ! -f build/train/organ_seg_registered.done ]; then
  # 0.6.0 on 40 generator 2.3.0 cases, 1200 iterations, one thread (0.7.0).
  organ_registered registered build/organ_seg_0.6.0/model.ts 40 data/nnunet_g23_40 1 1200 0.7.0 build/organ_seg_0.7.0/model.ts
fi
if want organs_g25 && [ ! -f build/train/organ_seg_g25.done ]; then
  # 0.7.0 on 22 generator 2.5.0 cases (an empty, collapsed stomach in half of them), 600 iterations, two
  # threads (the bundled 0.9.0; 0.8.0 was candidate F, not shipped).
  organ_registered g25 build/organ_seg_0.7.0/model.ts 22 data/nnunet_g25 2 600 0.9.0 models/organ_seg/model.ts
fi
if want pdac && [ ! -f build/train/pdac_seg.done ]; then
  # Leg 1: 3000 iterations; leg 2 resumes its checkpoint up to 6000 (the poly schedule is stretched).
  [ -f build/train/pdac_seg_leg1.done ] || {
    $SEG --dataset data/nnunet/Dataset503_PancreasTumour --task pdac --out models/pdac_seg/model.ts \
        --iterations 3000 --max-cases 120 --val-fraction 0.1 --val-max-cases 6 --model-version 0.2.0 \
        --checkpoint build/checkpoints/pdac_seg.pt
    mkdir -p build/train && touch build/train/pdac_seg_leg1.done; }
  $SEG --dataset data/nnunet/Dataset503_PancreasTumour --task pdac --out models/pdac_seg/model.ts \
      --iterations 6000 --max-cases 120 --val-fraction 0.1 --val-max-cases 6 --model-version 0.2.0 \
      --checkpoint build/checkpoints/pdac_seg.pt --resume
  mkdir -p build/train && touch build/train/pdac_seg.done
fi
LN="--dataset data/nnunet/Dataset502_PancreasLymphNodes --task lymph_nodes --iterations 3000 --max-cases 120 \
    --val-fraction 0.1 --val-max-cases 6 --per-node-sampling"
if want ln && [ ! -f build/train/ln_seg.done ]; then
  # Legs 1-2 (the paper's Tversky weights, which favour recall): 3000 iterations, then resumed to 5500
  # (ln_seg 0.4.0, kept under build/). Leg 3 fine-tunes it with FP and FN weighted alike on 48 cases,
  # which moves each node's edge back onto the label (docs/TRAINING.md): the bundled ln_seg 0.5.0.
  [ -f build/train/ln_seg_leg1.done ] || {
    $SEG $LN --out build/ln_seg_0.4.0/model.ts --model-version 0.4.0 --name ln_seg --checkpoint build/checkpoints/ln_seg.pt
    mkdir -p build/train && touch build/train/ln_seg_leg1.done; }
  [ -f build/train/ln_seg_leg2.done ] || {
    $SEG $LN --iterations 5500 --out build/ln_seg_0.4.0/model.ts --model-version 0.4.0 --name ln_seg \
        --checkpoint build/checkpoints/ln_seg.pt --resume
    mkdir -p build/train && touch build/train/ln_seg_leg2.done; }
  FT="--dataset data/nnunet/Dataset502_PancreasLymphNodes --task lymph_nodes --max-cases 48 --val-fraction 0.1 \
      --val-max-cases 4 --per-node-sampling --lr 0.002 --tversky-alpha 1 --tversky-beta 1 --name ln_seg \
      --model-version 0.5.0 --out models/ln_seg/model.ts --checkpoint build/checkpoints/ln_seg_finetune.pt"
  [ -f build/train/ln_seg_leg3.done ] || {
    $SEG $FT --init-from build/ln_seg_0.4.0/model.ts --iterations 406
    mkdir -p build/train && touch build/train/ln_seg_leg3.done; }
  $SEG $FT --iterations 800 --resume
  mkdir -p build/train && touch build/train/ln_seg.done
fi
if want ln_baseline && [ ! -f build/train/ln_seg_baseline.done ]; then
  $SEG $LN --no-attention --name ln_seg_baseline --out build/ln_seg_baseline/model.ts
  mkdir -p build/train && touch build/train/ln_seg_baseline.done
fi
if want ln_cls && [ ! -f build/train/ln_cls.done ]; then
  $PY -m training.train_ln_classifier --dataset data/nnunet/Dataset502_PancreasLymphNodes \
      --ln-seg-model build/ln_seg_0.4.0/model.ts --out models/ln_cls/model.ts --iterations 600 --lr 0.01 \
      --max-cases 200 --threads 2 --seed 0 --model-version 0.4.0
  mkdir -p build/train && touch build/train/ln_cls.done
fi
if want patient && [ ! -f build/train/patient_cls.done ]; then
  # patient_cls 0.6.0 was fitted to ln_seg 0.4.0's nodes (with the -30 HU fat-rim trim app.yaml had then)
  COMMON="--data data/nnunet_patients --ln-seg-model build/ln_seg_0.4.0/model.ts --ln-cls-model models/ln_cls/model.ts \
          --max-cases 80 --cache build/cache/patient_cls --threads 1"
  $PY -m training.train_patient_classifier $COMMON --out build/unused.ts --volumes-only --shard 0/2 &
  $PY -m training.train_patient_classifier $COMMON --out build/unused.ts --volumes-only --shard 1/2 &
  wait
  # patches from the PDAC model's masks, as at inference (the masks are cached for the second command)
  $PY -m training.train_patient_classifier $COMMON --mode combined --pdac-model models/pdac_seg/model.ts \
      --out models/patient_cls/model.ts --iterations 600 --lr 0.01 --max-minutes 15 --model-version 0.6.0
  $PY -m training.train_patient_classifier $COMMON --mode tumour_only --pdac-model models/pdac_seg/model.ts \
      --name patient_cls_tumour_only --out build/patient_cls_tumour_only/model.ts --iterations 600 --lr 0.01 \
      --max-minutes 15
  mkdir -p build/train && touch build/train/patient_cls.done
fi
if want manifest; then
  $PY scripts/update_model_manifest.py
fi
if want heldout; then
  # What the bundle reaches on unseen studies, recorded beside each model (lnmet/held_out.py)
  $PY -m evaluation.app_mode --count 30 --drop-dicom --json build/eval/app_mode.json
  $PY -m evaluation.record_held_out build/eval/app_mode.json
fi
