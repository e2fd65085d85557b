"""Wall time and peak memory of DICOM intake and registration on one `standard` study.

Stages, each in its own subprocess so that peak resident memory (the process's ``VmHWM`` after
exec, else ``ru_maxrss``; both count native allocations of pydicom/SimpleITK, unlike tracemalloc)
belongs to that stage alone. CPU seconds (user + system) are printed beside wall time: on a shared
machine the wall time depends on the load, the CPU time much less.

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
    """Peak resident memory of this process in MiB. ``VmHWM`` is reset by exec, whereas
    ``ru_maxrss`` of a fresh subprocess can still carry its parent's high-water mark."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stage_load(study: Path, work: Path) -> dict:
    import SimpleITK as sitk

    from lnmet.config import load_settings
    from operators.phase_selector import select_phases
    from operators.series_to_volume import selection_to_volumes
    from operators.study_loader import load_series

    c0 = _cpu_s()
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
            "scan_s": t1 - t0, "select_s": t2 - t1, "volumes_s": t3 - t2, "total_s": t3 - t0, "cpu_s": _cpu_s() - c0,
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
    c0 = _cpu_s()
    t0 = time.perf_counter()
    result = register_phases(venous, arterial, settings.registration, same_frame_of_reference=bool(for_v) and for_v == for_a)
    t1 = time.perf_counter()
    grid = working_grid(venous, [1.5, 1.5, 1.5])
    resample_image(venous, grid)
    resample_image(arterial, grid, result.transform)
    t2 = time.perf_counter()
    return {"register_s": t1 - t0, "resample_s": t2 - t1, "total_s": t2 - t0, "cpu_s": _cpu_s() - c0,
            "threads": result.metrics["threads"],
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
    ap.add_argument("--stage", choices=("generate", "load", "register"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.stage == "generate":
        from synthetic import generate_study, write_study

        t0 = time.perf_counter()
        path = write_study(generate_study(seed=args.seed, preset=args.preset), args.work / "study")
        print(json.dumps({"path": str(path), "seconds": time.perf_counter() - t0}))
        return 0
    if args.stage == "load":
        print(json.dumps(stage_load(args.study, args.work)))
        return 0
    if args.stage == "register":
        print(json.dumps(stage_register(args.work)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_intake_") as tmp:
        work = Path(tmp)
        study = args.study
        if study is None:  # generated in a subprocess too, so that this process stays small
            gen = _run_stage(["--stage", "generate", "--seed", str(args.seed), "--preset", args.preset,
                              "--work", str(work)])
            study = Path(gen["path"])
            print(f"generated {args.preset} study seed {args.seed} in {gen['seconds']:.1f} s")
        load_avg = os.getloadavg()[0]
        load = _run_stage(["--stage", "load", "--study", str(study), "--work", str(work)])
        reg = _run_stage(["--stage", "register", "--work", str(work)])
    print(f"machine: {os.cpu_count()} CPU(s) visible, {len(os.sched_getaffinity(0))} usable")
    print(f"1-min load average before the stages: {load_avg:.2f} (wall times grow with it)")
    print(f"{'stage':<38}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}")
    print(f"{'load + select + volumes':<38}{load['total_s']:>9.2f}{load['cpu_s']:>9.2f}{load['peak_rss_mib']:>14.0f}")
    print(f"{'  header scan (' + str(load['files']) + ' files, ' + str(load['series']) + ' series)':<38}"
          f"{load['scan_s']:>9.2f}")
    print(f"{'  phase selection':<38}{load['select_s']:>9.2f}")
    print(f"{'  both volumes':<38}{load['volumes_s']:>9.2f}")
    print(f"{'registration + resampling to 1.5 mm':<38}{reg['total_s']:>9.2f}{reg['cpu_s']:>9.2f}"
          f"{reg['peak_rss_mib']:>14.0f}")
    print(f"{'  registration (' + str(int(reg['threads'])) + ' threads)':<38}{reg['register_s']:>9.2f}")
    print(f"{'  resampling to working grid':<38}{reg['resample_s']:>9.2f}")
    print(f"volumes: venous {load['venous_size']}, arterial {load['arterial_size']}; working grid {reg['working_grid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
