"""Benchmark: wall time and peak memory to generate and write one study (default: `standard`).

    python benchmarks/bench_generator.py [--preset standard] [--seed 1] [--out DIR]

Each stage runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own.
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

CHILD = r"""
import json, sys, time, resource
sys.path.insert(0, {root!r})
from synthetic import generate_study, write_study
t0 = time.perf_counter()
s = generate_study({seed}, {preset!r})
t1 = time.perf_counter()
write_study(s, {out!r})
t2 = time.perf_counter()
print(json.dumps({{"generate_s": t1 - t0, "write_s": t2 - t1,
                  "voxels": int(s.grid.shape[0] * s.grid.shape[1] * s.grid.shape[2])}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one, removed)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench_gen_")
    code = CHILD.format(root=str(ROOT), seed=args.seed, preset=args.preset, out=out)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 1e6
    print(f"preset            {args.preset} (seed {args.seed}), {res['voxels'] / 1e6:.1f} M voxels per phase")
    print(f"generate          {res['generate_s']:.1f} s")
    print(f"write DICOM + GT  {res['write_s']:.1f} s   ({size_mb:.0f} MB on disk)")
    print(f"total wall time   {wall:.1f} s (including interpreter start)")
    print(f"peak memory       {peak_mb:.0f} MB (resident, child process)")
    print(f"cpu count         {os.cpu_count()}")
    if args.out is None:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
