"""Command line of the synthetic study generator.

    python -m synthetic generate --seed 0 --count 3 --preset tiny --out DIR
    python -m synthetic stats --seed 1000 --count 120
    python -m synthetic export-nnunet --seed 0 --count 60 --preset train --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from synthetic.grid import PRESETS


def _generate(args: argparse.Namespace) -> int:
    from synthetic import generate_study, write_study

    out = Path(args.out)
    for seed in range(args.seed, args.seed + args.count):
        t0 = time.perf_counter()
        case = out / f"SYN{seed:06d}"
        if args.skip_existing and (case / "ground_truth" / "study.json").exists():
            print(f"{case} exists, skipped")
            continue
        descriptions = {"arterial": "", "venous": ""} if args.blank_descriptions else None
        path = write_study(generate_study(seed, args.preset), out, descriptions=descriptions)
        print(f"{path}  ({args.preset}, {time.perf_counter() - t0:.1f} s)")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from synthetic.cohort import cohort_statistics, format_statistics

    stats = cohort_statistics(range(args.seed, args.seed + args.count), workers=args.workers)
    print(format_statistics(stats))
    if args.separability:  # AUC of every node parameter and head measurement (evaluation/node_separability.py)
        from evaluation.node_separability import format_separability, node_separability

        print()
        print(format_separability(node_separability(range(args.seed, args.seed + args.count), args.separability_cache,
                                                    args.workers)), flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from synthetic.nnunet import export_nnunet

    export_nnunet(Path(args.out), range(args.seed, args.seed + args.count), args.preset, workers=args.workers,
                  acquisition=args.acquisition)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    presets = sorted(PRESETS)

    g = sub.add_parser("generate", help="write DICOM studies with their ground truth")
    g.add_argument("--seed", type=int, default=0, help="seed of the first study (one study per seed)")
    g.add_argument("--count", type=int, default=1, help="how many studies (consecutive seeds)")
    g.add_argument("--preset", choices=presets, default="tiny", help="size preset")
    g.add_argument("--out", required=True, help="output folder (one sub-folder per study)")
    g.add_argument("--blank-descriptions", action="store_true",
                   help="leave SeriesDescription empty (phase selection must rely on timing)")
    g.add_argument("--skip-existing", action="store_true", help="keep studies already written")
    g.set_defaults(func=_generate)

    s = sub.add_parser("stats", help="print the cohort statistics (paper Table 1 / section 4.1.1) of a generated cohort")
    s.add_argument("--seed", type=int, default=1000)
    s.add_argument("--count", type=int, default=120)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--no-separability", dest="separability", action="store_false",
                   help="skip the AUC of every node parameter and identification-head measurement (renders the "
                        "cohort at the train preset, cached: evaluation/node_separability.py)")
    s.add_argument("--separability-cache", default="build/stats", help="where that rendered cohort is kept")
    s.set_defaults(func=_stats)

    e = sub.add_parser("export-nnunet", help="write a cohort in nnU-Net's raw dataset layout (training data)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--count", type=int, default=60)
    e.add_argument("--preset", choices=presets, default="train")
    e.add_argument("--out", required=True)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--acquisition", choices=["preset", "random"], default="preset",
                   help="random: each case acquired at its own voxel size and coverage (0.6-5 mm) and resampled "
                        "to the preset's grid by the app's own resampling (training data)")
    e.set_defaults(func=_export)

    args = parser.parse_args(argv)
    if getattr(args, "count", 1) < 1:
        parser.error("--count must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
