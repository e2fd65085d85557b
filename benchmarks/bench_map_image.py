#!/usr/bin/env python
"""The MAP image against the bare application: wall time on the same study in the same session,
and whether the outputs agree.

Runs, alternately and ``--repeat`` times, ``python app -i STUDY/dicom -o OUT -m models`` (the bare
app, from the project) and ``docker run`` of the image built by ``scripts/build_map_image.sh``
(its last build, or ``--tag``). Each time is the wall time of the whole process as a user sees it:
for the image, container start and stop included. After each pair, the outputs are compared
(``results.json`` apart from timings and new UIDs, SEG pixel data; ``scripts/map_image.py``).

    python benchmarks/bench_map_image.py                       # a tiny generated study (seed 7)
    python benchmarks/bench_map_image.py --preset standard     # a standard study (512x512x200)
    python benchmarks/bench_map_image.py --study output/sample_study/SYN100001

The machine is shared: compare the ratios, which are measured in the same run, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import map_image  # noqa: E402
from docker_engine import DockerUnavailable, docker_engine  # noqa: E402


def _big_stack() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = map_image.STACK_BYTES
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def _study(args: argparse.Namespace) -> Path:
    if args.study is not None:
        return args.study
    cache = ROOT / "output" / "bench_map_image"
    wanted = cache / f"SYN{args.seed:06d}_{args.preset}"
    if (wanted / "dicom").is_dir():
        return wanted
    from synthetic import generate_study, write_study

    t = time.perf_counter()
    written = write_study(generate_study(seed=args.seed, preset=args.preset), cache / "tmp")
    written.rename(wanted)
    (cache / "tmp").rmdir()
    print(f"generated {args.preset} study {wanted.name} in {time.perf_counter() - t:.1f} s (not counted)")
    return wanted


def _run_bare(dicom: Path, out: Path, models: Path) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "app"), "-i", str(dicom), "-o", str(out), "-m", str(models)],
                          capture_output=True, text=True, env=env, cwd=ROOT, preexec_fn=_big_stack)
    return time.perf_counter() - t, done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a written study folder (with dicom/); default: generate one")
    parser.add_argument("--preset", choices=["tiny", "standard"], default="tiny")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated study")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs (bare app, image), alternating")
    parser.add_argument("-t", "--tag", help="image (default: the last one built)")
    args = parser.parse_args(argv)

    study = _study(args)
    dicom = study / "dicom" if (study / "dicom").is_dir() else study
    try:
        tag = args.tag or map_image.default_tag()
    except map_image.ImageBuildError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    rows = []
    try:
        with docker_engine(ROOT / "build" / "docker") as engine, tempfile.TemporaryDirectory(dir=ROOT / "build") as tmp:
            size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
            print(f"study {study} ({dicom}); image {tag} ({size / 1e9:.2f} GB)")
            for k in range(args.repeat):
                bare_out, image_out = Path(tmp) / f"bare{k}", Path(tmp) / f"image{k}"
                bare_s, bare_rc = _run_bare(dicom, bare_out, ROOT / "models")
                t = time.perf_counter()
                done = map_image.run_image(engine, tag, dicom, image_out)
                image_s = time.perf_counter() - t
                if bare_rc != 0 or done.returncode != 0:
                    print(f"ERROR: run {k + 1}: bare app exit {bare_rc}, image exit {done.returncode}\n"
                          f"{done.stderr[-2000:]}", file=sys.stderr)
                    return 1
                diffs = map_image.compare_outputs(bare_out, image_out)
                rows.append((bare_s, image_s, diffs))
                print(f"run {k + 1}: bare app {bare_s:7.1f} s, image {image_s:7.1f} s, ratio {image_s / bare_s:.2f}; "
                      f"outputs {'identical (results.json apart from timings/new UIDs, SEG pixels)' if not diffs else 'DIFFER'}",
                      flush=True)
                for d in diffs[:10]:
                    print(f"    {d}")
    except DockerUnavailable as exc:
        print(f"ERROR: no Docker engine: {exc}", file=sys.stderr)
        return 1
    bare = [r[0] for r in rows]
    image = [r[1] for r in rows]
    print(f"\n{'':<28}{'bare app':>10}{'image':>10}{'ratio':>8}")
    print(f"{'fastest of ' + str(len(rows)) + ' (s)':<28}{min(bare):>10.1f}{min(image):>10.1f}{min(image) / min(bare):>8.2f}")
    print(f"{'median (s)':<28}{statistics.median(bare):>10.1f}{statistics.median(image):>10.1f}"
          f"{statistics.median(image) / statistics.median(bare):>8.2f}")
    print(f"outputs identical in {sum(not r[2] for r in rows)} of {len(rows)} pairs")
    return 0 if all(not r[2] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
