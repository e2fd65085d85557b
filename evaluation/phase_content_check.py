"""How often the intake's phase-by-content check (lnmet/phase_content.py) raises a false alarm on
correctly labelled generated studies, and how often it catches the same studies with their phases
swapped.

For each study: the brightest large vessel of its arterial and venous phase, then the check as the
app runs it (``phase_policy.content_margin_hu`` of app.yaml) on the pair as generated (any alarm is
a false alarm) and on the pair swapped (an alarm is a catch). Validation seeds by default (150000+):
the margin was fixed before looking (50 HU, between the aorta's typical arterial ~300 HU and
venous ~170 HU), not tuned here.

    python -m evaluation.phase_content_check --count 20 --preset tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from lnmet.config import load_settings
    from lnmet.phase_content import brightest_large_vessel, swapped_phases_message
    from synthetic import generate_study

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-start", type=int, default=150000)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    margin = load_settings().phase_content_margin_hu
    false_alarms, caught, unmeasured, gaps = [], 0, 0, []
    print(f"seed     arterial HU  venous HU   as generated   swapped   (margin {margin:g} HU, preset {args.preset})")
    for seed in range(args.seed_start, args.seed_start + args.count):
        study = generate_study(seed, args.preset, progress=lambda text: None)
        art, ven = brightest_large_vessel(study.arterial), brightest_large_vessel(study.venous)
        alarm = swapped_phases_message(art, ven, margin, "arterial", "venous")
        catch = swapped_phases_message(ven, art, margin, "venous", "arterial")
        if art.hu is None or ven.hu is None:
            unmeasured += 1
        else:
            gaps.append(art.hu - ven.hu)
        if alarm:
            false_alarms.append(seed)
        caught += bool(catch)
        fmt = lambda m: "   none" if m.hu is None else f"{m.hu:7.0f}"  # noqa: E731
        print(f"{seed}  {fmt(art)}     {fmt(ven)}     {'ALARM' if alarm else 'ok':>10}   "
              f"{'caught' if catch else 'MISSED':>8}", flush=True)
    n = args.count
    print(f"\nfalse alarms on correctly labelled studies: {len(false_alarms)}/{n}"
          + (f" (seeds {', '.join(map(str, false_alarms))})" if false_alarms else ""))
    print(f"swapped pairs caught: {caught}/{n}; studies without a large vessel in a phase: {unmeasured}")
    if gaps:
        print(f"arterial minus venous brightest-vessel HU: median {statistics.median(gaps):.0f}, "
              f"min {min(gaps):.0f}, max {max(gaps):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
