"""Wall time and peak memory of organ segmentation and of the attention map on a standard study.

Generates one ``standard`` study (512 x 512 at ~0.7 mm, 200 slices of 1 mm; seed 100000 by default,
never a training seed), puts both phases on the organ model's working grid (perfectly aligned
arterial phase, so that only segmentation is timed), and measures, on the CPU unless ``--device``
says otherwise:

- organ segmentation as the operator runs it (model inputs, body box, sliding window, label map
  back to the reference grid), with the sliding window alone reported too;
- the attention map (Eq. 1-2) on the working grid, of the predicted organs and of the generator's
  ground-truth organs (what a well-trained organ model gives);
- with ``--ln-model``: LN segmentation with and without window skipping (and their ratio), with the
  ground-truth-organ attention map.

Peak memory is the process's resident-set high-water mark during each stage (Linux
``/proc/self/status`` VmHWM, reset before the stage), printed with the resident size before it.

    python benchmarks/bench_segmentation.py [--models models] [--seed 100000] [--threads 2] [--ln-model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(label: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    """Run ``fn`` once, record wall time, RSS before and the peak RSS during it."""
    before = _status_mib("VmRSS")
    can_reset = _reset_peak()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM") if can_reset else None
    results[label] = {"seconds": round(seconds, 2), "rss_before_mib": before, "peak_rss_mib": peak}
    peak_txt = f"peak RSS {peak:.0f} MiB (before {before:.0f} MiB, +{peak - before:.0f})" if peak and before else "peak n/a"
    print(f"{label:<42s} {seconds:8.2f} s   {peak_txt}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=str(ROOT / "models"), help="models folder (<name>/model.ts) or organ model file")
    p.add_argument("--ln-model", help="LN segmentation model file (optional: times window skipping)")
    p.add_argument("--seed", type=int, default=100000)
    p.add_argument("--preset", default="standard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from evaluation.organ_segmentation import registered_from_study
    from lnmet.attention import attention_map
    from lnmet.config import load_settings
    from lnmet.geometry import resample_labels
    from lnmet.inference import SegmentationModel, labels_to_grid, model_inputs, resolve_model_path
    from operators.organ_segmentation import segment_organs
    from synthetic import generate_study

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    model = SegmentationModel.load(resolve_model_path("organ_seg", args.models), args.device)
    study = measure("generate standard study (not product time)", lambda: generate_study(args.seed, args.preset),
                    results)
    ref = study.venous
    print(f"reference grid {ref.GetSize()} at {tuple(round(s, 2) for s in ref.GetSpacing())} mm; organ model "
          f"{model.name} {model.metadata['version']}, patch {model.metadata['patch_size']} at "
          f"{model.spacing_mm} mm, device {model.device}, {torch.get_num_threads()} threads")
    registered = registered_from_study(study, model.spacing_mm, "perfect")
    print(f"working grid {registered.working_venous.GetSize()}")

    working, _ = measure("organ segmentation (operator, total)", lambda: segment_organs(registered, model), results)
    channels, grid = model_inputs(registered, model)
    measure("  sliding window only", lambda: model.segment(channels, spacing_zyx=grid.GetSpacing()[::-1]), results)
    measure("  label map to the reference grid", lambda: labels_to_grid(working, ref), results)
    settings = load_settings().attention
    att_pred = measure("attention map (predicted organs)", lambda: attention_map(working, settings), results)
    # the generator's organs on the working grid: the attention extent of a well-trained organ model
    gt_working = resample_labels(study.organs, working, smooth=False)
    att = measure("attention map (ground-truth organs)", lambda: attention_map(gt_working, settings), results)
    results["attention_share_predicted"] = float((sitk.GetArrayViewFromImage(att_pred) > 0).mean())
    results["attention_share_ground_truth"] = float((sitk.GetArrayViewFromImage(att) > 0).mean())
    print(f"working voxels with attention > 0: {100 * results['attention_share_ground_truth']:.1f}% (ground-truth "
          f"organs), {100 * results['attention_share_predicted']:.1f}% (predicted organs)")

    if args.ln_model:
        from operators.ln_segmentation import segment_lymph_nodes

        ln = SegmentationModel.load(args.ln_model, args.device)
        on, s_on = measure("LN segmentation, window skipping",
                           lambda: segment_lymph_nodes(registered, att, ln, skip_empty_windows=True), results)
        off, s_off = measure("LN segmentation, every window",
                             lambda: segment_lymph_nodes(registered, att, ln, skip_empty_windows=False), results)
        on, off = sitk.GetArrayFromImage(on), sitk.GetArrayFromImage(off)
        ratio = results["LN segmentation, every window"]["seconds"] / max(results["LN segmentation, window skipping"]["seconds"], 1e-9)
        results["ln_windows"] = {"total": s_on.windows_total, "run_with_skipping": s_on.windows_run}
        results["ln_skip_speedup"] = round(ratio, 2)
        results["ln_max_abs_difference"] = float(np.abs(on - off).max())
        print(f"LN windows run: {s_on.windows_run}/{s_on.windows_total} with skipping; speed-up x{ratio:.2f}; "
              f"max |difference| {results['ln_max_abs_difference']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
