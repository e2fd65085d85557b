"""Wall time and peak memory of DICOM intake and registration on one `standard` study.

Stages, each in its own subprocess so that peak resident memory (``ru_maxrss``, which counts native
allocations of pydicom/SimpleITK, unlike tracemalloc) belongs to that stage alone:

1. ``load``: scan the folder's headers, select the phases, build both volumes (float32 HU);
2. ``register``: register arterial to venous (app.yaml ``registration``) and resample both phases
   to the 1.5 mm working grid (the volumes of stage 1 are handed over as .mha files).

    python benchmarks/bench_intake.py                 # generates a standard study (seed 100000)
    python benchmarks/bench_intake.py --study DIR     # reuses a written study (DIR/dicom/...)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def stage_load(study: Path, work: Path) -> dict:
    import SimpleITK as sitk

    from lnmet.config import load_settings
    from operators.phase_selector import select_phases
    from operators.series_to_volume import selection_to_volumes
    from operators.study_loader import load_series

    t0 = time.perf_counter()
    series = load_series(study)
    t1 = time.perf_counter()
    selection = select_phases(series, load_settings())
    t2 = time.perf_counter()
    venous, arterial = selection_to_volumes(selection)
    t3 = time.perf_counter()
    sitk.WriteImage(venous.image, str(work / "venous.mha"))
    sitk.WriteImage(arterial.image, str(work / "arterial.mha"))
    (work / "for.json").write_text(json.dumps([venous.frame_of_reference_uid, arterial.frame_of_reference_uid]))
    return {"files": sum(s.num_instances for s in series), "series": len(series),
            "scan_s": t1 - t0, "select_s": t2 - t1, "volumes_s": t3 - t2, "total_s": t3 - t0,
            "venous_size": list(venous.image.GetSize()), "arterial_size": list(arterial.image.GetSize()),
            "peak_rss_mib": _peak_mib()}


def stage_register(work: Path) -> dict:
    import SimpleITK as sitk

    from lnmet.config import load_settings
    from lnmet.geometry import resample_image, working_grid
    from lnmet.registration import register_phases

    venous = sitk.ReadImage(str(work / "venous.mha"))
    arterial = sitk.ReadImage(str(work / "arterial.mha"))
    for_v, for_a = json.loads((work / "for.json").read_text())
    settings = load_settings()
    t0 = time.perf_counter()
    result = register_phases(venous, arterial, settings.registration, same_frame_of_reference=bool(for_v) and for_v == for_a)
    t1 = time.perf_counter()
    grid = working_grid(venous, [1.5, 1.5, 1.5])
    resample_image(venous, grid)
    resample_image(arterial, grid, result.transform)
    t2 = time.perf_counter()
    return {"register_s": t1 - t0, "resample_s": t2 - t1, "total_s": t2 - t0, "threads": result.metrics["threads"],
            "working_grid": list(grid.GetSize()), "peak_rss_mib": _peak_mib()}


def _run_stage(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage {args[1]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, help="a written study folder to reuse (default: generate one)")
    ap.add_argument("--seed", type=int, default=100000, help="seed of the generated study (default 100000)")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--stage", choices=("load", "register"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.stage == "load":
        print(json.dumps(stage_load(args.study, args.work)))
        return 0
    if args.stage == "register":
        print(json.dumps(stage_register(args.work)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_intake_") as tmp:
        work = Path(tmp)
        study = args.study
        if study is None:
            from synthetic import generate_study, write_study

            t0 = time.perf_counter()
            study = Path(write_study(generate_study(seed=args.seed, preset=args.preset), work / "study"))
            print(f"generated {args.preset} study seed {args.seed} in {time.perf_counter() - t0:.1f} s: {study}")
        load = _run_stage(["--stage", "load", "--study", str(study), "--work", str(work)])
        reg = _run_stage(["--stage", "register", "--work", str(work)])
    print(f"machine: {os.cpu_count()} CPU(s) visible, {len(os.sched_getaffinity(0))} usable")
    print(f"{'stage':<38}{'wall s':>9}{'peak RSS MiB':>14}")
    print(f"{'load + select + volumes':<38}{load['total_s']:>9.2f}{load['peak_rss_mib']:>14.0f}")
    print(f"{'  header scan (' + str(load['files']) + ' files, ' + str(load['series']) + ' series)':<38}"
          f"{load['scan_s']:>9.2f}")
    print(f"{'  phase selection':<38}{load['select_s']:>9.2f}")
    print(f"{'  both volumes':<38}{load['volumes_s']:>9.2f}")
    print(f"{'registration + resampling to 1.5 mm':<38}{reg['total_s']:>9.2f}{reg['peak_rss_mib']:>14.0f}")
    print(f"{'  registration (' + str(int(reg['threads'])) + ' threads)':<38}{reg['register_s']:>9.2f}")
    print(f"{'  resampling to working grid':<38}{reg['resample_s']:>9.2f}")
    print(f"volumes: venous {load['venous_size']}, arterial {load['arterial_size']}; working grid {reg['working_grid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
