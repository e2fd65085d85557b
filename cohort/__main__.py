"""``python -m cohort``: run the application on every study of a cohort, on Ray (see cohort/__init__.py).

    python -m cohort run --input ROOT_OR_LIST.csv --output OUT [--resume] [--labels labels.csv]
                         [--address HOST:PORT] [--workers N] [--cpus-per-study C]
                         [--memory-per-study GIB] [--gpus-per-study G] [--num-cpus N] [-m MODELS]
    python -m cohort stats OUT --labels labels.csv        # the statistics of a finished run
    python -m cohort compare OUT_A OUT_B --labels labels.csv   # DeLong between two runs

Exit status: 0 every study done (or not assessable), 1 some study failed, 2 bad arguments,
3 the cohort could not run (input, models, Ray resources).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 1, 2, 3

from cohort.worker import raise_stack_limit  # noqa: E402

raise_stack_limit()  # before Holoscan is imported; a local Ray instance's workers inherit it


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cohort", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the app on every study under a folder (or a CSV list of folders)")
    run.add_argument("--input", "-i", type=Path, required=True,
                     help="root folder (any layout; studies found by StudyInstanceUID) or a .csv list of study folders")
    run.add_argument("--output", "-o", type=Path, required=True, help="cohort output folder (not inside the input)")
    run.add_argument("--models", "-m", type=Path, default=ROOT / "models", help="models folder (default: models/)")
    run.add_argument("--resume", action="store_true",
                     help="skip studies whose outputs are complete and valid (checked: schema, files, UIDs, models)")
    run.add_argument("--labels", type=Path, help="CSV with study_uid,label: also compute the cohort statistics")
    run.add_argument("--address", help="an existing Ray cluster (e.g. 10.0.0.5:6379 or 'auto'); default: a local instance")
    run.add_argument("--num-cpus", type=int, help="local instance only: CPUs Ray may use (default: all)")
    run.add_argument("--num-gpus", type=int, help="local instance only: GPUs Ray may use (default: detected)")
    run.add_argument("--workers", type=int, help="worker processes (default: as many as the resources fit)")
    run.add_argument("--cpus-per-study", type=float, help="CPUs per study (default: app.yaml resources.cpu)")
    run.add_argument("--memory-per-study", type=float, metavar="GIB",
                     help="memory per study in GiB (default: app.yaml resources.memory)")
    run.add_argument("--gpus-per-study", type=float,
                     help="GPUs per study, fractions allowed (default: 1 where the cluster has GPUs, else 0)")
    run.add_argument("-v", "--verbose", action="store_true", help="log the driver's INFO messages")
    stats = sub.add_parser("stats", help="cohort statistics of a finished run against labels")
    stats.add_argument("run_folder", type=Path)
    stats.add_argument("--labels", type=Path, required=True)
    cmp_ = sub.add_parser("compare", help="DeLong's test between the AUCs of two runs")
    cmp_.add_argument("run_a", type=Path)
    cmp_.add_argument("run_b", type=Path)
    cmp_.add_argument("--labels", type=Path, required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    from cohort.discovery import CohortInputError
    from cohort.runner import CohortError, CohortOptions, configure_logging, run_cohort
    from cohort.statistics import compare_runs, cohort_statistics, format_statistics, read_labels
    from cohort.table import STATUS_FAILED, read_table

    configure_logging(getattr(args, "verbose", False))
    try:
        if args.command == "stats":
            for line in format_statistics(cohort_statistics(read_table(args.run_folder), read_labels(args.labels))):
                print(line)
            return EXIT_OK
        if args.command == "compare":
            result = compare_runs(read_table(args.run_a), read_table(args.run_b), read_labels(args.labels))
            print(json.dumps(result, indent=1))
            return EXIT_OK
        opts = CohortOptions(input=args.input, output=args.output, models=args.models, resume=args.resume,
                             labels=args.labels, address=args.address, num_cpus=args.num_cpus,
                             num_gpus=args.num_gpus, workers=args.workers, cpus_per_study=args.cpus_per_study,
                             memory_per_study_gib=args.memory_per_study, gpus_per_study=args.gpus_per_study)
        summary = run_cohort(opts, print_fn=lambda line: print(line, flush=True))
    except (CohortInputError, CohortError, FileNotFoundError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("ERROR: interrupted; the table lists what finished", file=sys.stderr, flush=True)
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if any(r["status"] == STATUS_FAILED for r in summary["rows"]) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
