"""LN segmentation time with and without window skipping, and LN identification time per node (CPU).

On one generated study (``standard`` preset by default: 512 x 512 x 200 at ~0.7 x 0.7 x 1 mm, like a
clinical scan; seed 100000) with the bundled models:

1. the phases on the LN model's working grid (the generator's aligned arterial phase) and the
   attention map from the ground-truth organ labels (the organ model is not what is timed here);
2. LN segmentation as the app runs it (:func:`operators.ln_segmentation.segment_lymph_nodes`) with
   window skipping (windows whose attention is zero everywhere are not run) and without; wall time
   of each (fastest of ``--repeat`` runs, in alternating order), windows run/total, their ratio,
   and the largest difference between the two outputs (expected ~0: skipping is exact);
3. LN identification as the app runs it (:func:`operators.ln_identification.identify_lymph_nodes`:
   instances, crops, batched classification, measurements) on the segmented instances; wall time
   per node, and the time of the classification alone (crops, node masks, network) per node. When the model segments
   no node, the ground-truth instances are classified instead (said in the output).

The network is warmed up (two forward passes) before timing, so that TorchScript's first-call
optimisation is not counted in either run.

    python benchmarks/bench_ln.py [--preset standard] [--seed 100000] [--models models] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="standard")
    p.add_argument("--seed", type=int, default=100000)
    p.add_argument("--models", default=str(ROOT / "models"))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=8, help="identification crops per batch")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each timed step (the fastest is reported; timing noise on a shared CPU is "
                        "larger than what skipping one window in 48 saves)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from evaluation.organ_segmentation import registered_from_study
    from lnmet.attention import attention_map
    from lnmet.config import load_settings
    from lnmet.geometry import resample_labels
    from lnmet.inference import SegmentationModel, model_inputs, resolve_model_path
    from lnmet.networks.ln_classifier import LNIdentifier, identify_instances, node_centres
    from operators.ln_identification import identify_lymph_nodes
    from operators.ln_segmentation import segment_lymph_nodes
    from synthetic import generate_study

    settings = load_settings()
    seg = SegmentationModel.load(resolve_model_path("ln_seg", args.models), "cpu")
    ident = LNIdentifier.load(resolve_model_path("ln_cls", args.models), "cpu")
    t = time.perf_counter()
    study = generate_study(args.seed, args.preset)
    print(f"study: preset {args.preset}, {study.venous.GetSize()} voxels at "
          f"{tuple(round(s, 2) for s in study.venous.GetSpacing())} mm (generated in {time.perf_counter() - t:.0f} s)",
          flush=True)
    registered = registered_from_study(study, seg.spacing_mm)
    _, grid = model_inputs(registered, seg)
    attention = attention_map(resample_labels(study.organs, grid, smooth=False), settings.attention)
    att = sitk.GetArrayViewFromImage(attention)
    print(f"working grid {grid.GetSize()} at {grid.GetSpacing()[0]:.2f} mm; attention > 0 in "
          f"{100 * float((att > 0).mean()):.1f}% of the voxels; torch threads {args.threads}", flush=True)

    # warm-up: TorchScript optimises a module on its first calls; the zero-attention logits of the
    # skipping path are computed once per model (cached by SegmentationModel)
    with torch.no_grad():
        shape = (1, len(seg.channel_names)) + seg.patch_zyx
        for _ in range(2):
            seg.module(torch.zeros(shape), torch.ones((1, 1) + seg.patch_zyx)) if seg.uses_attention \
                else seg.module(torch.zeros(shape))
    if seg.uses_attention:
        seg.constant_logits()

    results: dict = {"preset": args.preset, "seed": args.seed, "threads": args.threads,
                     "working_grid": list(grid.GetSize()), "ln_seg": seg.metadata["name"] + " " + seg.metadata["version"]}
    probs, runs = {}, {True: [], False: []}
    for r in range(max(args.repeat, 1)):  # alternating order, so that drift in machine load hits both
        for skip in ((True, False) if r % 2 == 0 else (False, True)):
            t = time.perf_counter()
            prob, stats = segment_lymph_nodes(registered, attention, seg, skip_empty_windows=skip)
            runs[skip].append(time.perf_counter() - t)
            probs[skip] = sitk.GetArrayFromImage(prob)
            key = "with_skipping" if skip else "without_skipping"
            results[key] = {"seconds": round(min(runs[skip]), 2), "runs_seconds": [round(v, 2) for v in runs[skip]],
                            "windows_run": stats.windows_run, "windows_total": stats.windows_total}
    for skip in (True, False):
        key = "with_skipping" if skip else "without_skipping"
        print(f"LN segmentation {key.replace('_', ' ')}: {results[key]['seconds']:.1f} s (fastest of "
              f"{', '.join(f'{v:.1f}' for v in runs[skip])}), {results[key]['windows_run']}/"
              f"{results[key]['windows_total']} windows run", flush=True)
    results["speed_up"] = round(results["without_skipping"]["seconds"] / max(results["with_skipping"]["seconds"], 1e-9), 2)
    results["max_abs_difference"] = float(np.abs(probs[True] - probs[False]).max())
    print(f"ratio without/with skipping: {results['speed_up']:.2f}x; largest output difference "
          f"{results['max_abs_difference']:.2e}", flush=True)

    prob_img = sitk.GetImageFromArray(probs[True])
    prob_img.CopyInformation(grid)
    best, nodes = float("inf"), []
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        instances, nodes = identify_lymph_nodes(registered, prob_img, study.organs, ident, settings, attention,
                                                args.batch_size)
        best = min(best, time.perf_counter() - t)
    source = "segmented"
    if not nodes:
        source = "ground-truth (the model segmented none)"
        instances = sitk.Cast(study.ln_instances, sitk.sitkUInt16)
    channels, igrid = model_inputs(registered, ident)
    _, centres = node_centres(instances, igrid)
    t = time.perf_counter()
    identify_instances(ident, instances, igrid, channels, sitk.GetArrayFromImage(attention), args.batch_size)
    net_secs = time.perf_counter() - t
    n = max(len(centres), 1)
    results["identification"] = {"instances": source, "nodes": len(centres), "batch_size": args.batch_size,
                                 "operator_seconds": round(best, 3) if nodes else None,
                                 "operator_seconds_per_node": round(best / n, 4) if nodes else None,
                                 "network_seconds_per_node": round(net_secs / n, 4)}
    print(f"LN identification on {len(centres)} {source} nodes: "
          + (f"operator {best:.2f} s ({best / n * 1000:.0f} ms per node, incl. instances and measurements); "
             if nodes else "")
          + f"network (crops, masks, model) {net_secs / n * 1000:.0f} ms per node (batch {args.batch_size}, CPU)", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
