"""Sliding-window inference on a shared CPU: OpenMP's spinning waits (ACTIVE) against sleeping ones (PASSIVE).

Issue 15 saw the whole app take 6-14 minutes on the real 20-slice series of
``../shared/dicom-samples/abdomen-ct-j2k-siemens`` while other jobs ran; alone it takes about 40 s.
The cause measured here: PyTorch's intra-op threads wait for work by spinning (``OMP_WAIT_POLICY``
ACTIVE is libgomp's default), and on a CPU that other processes also use, the spinning threads take
time slices from the threads that work. The app now starts with ``OMP_WAIT_POLICY=PASSIVE``
(app/__main__.py).

Each measurement runs in its own subprocess (the policy is read when OpenMP starts): the organ
model's sliding-window inference on the sample's venous volume at the models' 1.5 mm grid
(334 x 334 x 27 voxels, 18 windows of 80 x 80 x 48), with PyTorch's default thread count. It runs
idle and beside ``--busy`` competing busy-loop processes (at the same niceness, stopped at the end
of each measurement: the contention a shared machine gives), the two policies in alternating order,
``--repeat`` times each; the median is printed with every run. Wall time depends on whatever else
the machine runs: compare the two policies of the same run, not figures of different runs.

    python benchmarks/bench_cpu_contention.py                  # --busy 2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "dicom-samples" / "abdomen-ct-j2k-siemens"
POLICIES = ("ACTIVE", "PASSIVE")


def child() -> None:
    """One measurement (in a fresh process): print {"seconds", "threads", "windows"} as JSON."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import SimpleITK as sitk
    import torch

    from lnmet.dicom_io import build_volume, scan_folder
    from lnmet.geometry import resample_image, working_grid
    from lnmet.inference import SegmentationModel

    image = build_volume(scan_folder(SAMPLE).series[0]).image
    grid = working_grid(image, (1.5, 1.5, 1.5))
    venous = sitk.GetArrayFromImage(resample_image(image, grid)).astype(np.float32)
    model = SegmentationModel.load(ROOT / "models" / "organ_seg" / "model.ts", "cpu")
    channels = np.stack([venous] * len(model.channel_names))
    t0 = time.perf_counter()
    _, stats = model.segment(channels, spacing_zyx=grid.GetSpacing()[::-1])
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                      "windows": stats.windows_total}))


def measure(policy: str, busy: int) -> dict:
    """Run :func:`child` under ``policy`` beside ``busy`` busy-loop processes."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        done = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, env=env,
                              timeout=1800, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for p in loops:
            p.kill()
            p.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="competing busy-loop processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    if not SAMPLE.is_dir() or not (ROOT / "models" / "organ_seg" / "model.ts").is_file():
        sys.exit(f"needs {SAMPLE} and models/organ_seg/model.ts")
    print(f"organ model sliding-window inference, real sample {SAMPLE.name}; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    results: dict[tuple[int, str], list[float]] = {}
    for busy in (0, args.busy):
        for r in range(args.repeat):
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            for policy in order:
                m = measure(policy, busy)
                results.setdefault((busy, policy), []).append(m["seconds"])
                print(f"  busy {busy}  {policy:<7} run {r + 1}: {m['seconds']:6.1f} s "
                      f"({m['windows']} windows, {m['threads']} torch threads)", flush=True)
    print("\nmedian wall time (s)      ACTIVE   PASSIVE   ACTIVE/PASSIVE")
    for busy in (0, args.busy):
        a, p = (statistics.median(results[(busy, k)]) for k in POLICIES)
        label = "idle" if busy == 0 else f"beside {busy} busy processes"
        print(f"  {label:<24} {a:7.1f}  {p:8.1f}   x{a / p:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
