"""The seed ranges of generated studies, and the guard that keeps choices off the test seeds.

- training seeds: below 100000 (what models are trained on);
- held-out test seeds: 100000-149999 (the figures the README reports; never used to choose anything:
  no training, no threshold, no instance filter, no setting);
- validation seeds: 150000 and up (where settings such as app.yaml's instance filter are chosen).

Every command that chooses something from data (the instance-filter sweep of
``evaluation/ln_detection.py``, the training commands, which store decision thresholds picked on
their validation split, the cross-validation protocol) calls :func:`refuse_test_seeds` first.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

FIRST_TEST_SEED = 100000
FIRST_VALIDATION_SEED = 150000
TEST_SEEDS = range(FIRST_TEST_SEED, FIRST_VALIDATION_SEED)


class TestSeedError(ValueError):
    """Held-out test seeds were given to something that chooses settings or trains."""

    __test__ = False  # not a pytest test class


def is_test_seed(seed: int) -> bool:
    return FIRST_TEST_SEED <= int(seed) < FIRST_VALIDATION_SEED


def seed_set_name(seeds: Iterable[int]) -> str:
    """What a set of seeds is, for a report's heading: "held-out", "validation", "training" or
    "mixed-seed" (the latter when they span more than one range)."""
    kinds = {"held-out" if is_test_seed(s) else "validation" if int(s) >= FIRST_VALIDATION_SEED else "training"
             for s in seeds}
    return kinds.pop() if len(kinds) == 1 else "mixed-seed"


def refuse_test_seeds(seeds: Iterable[int], what: str) -> None:
    """Raise :class:`TestSeedError` naming ``what`` when any of ``seeds`` is a held-out test seed."""
    bad = sorted({int(s) for s in seeds if is_test_seed(s)})
    if bad:
        shown = ", ".join(str(s) for s in bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise TestSeedError(
            f"{what} chooses settings from the data and must not see the held-out test seeds "
            f"{FIRST_TEST_SEED}-{FIRST_VALIDATION_SEED - 1} (given: {shown}); use validation seeds "
            f"(from {FIRST_VALIDATION_SEED}) or training seeds (below {FIRST_TEST_SEED})")


def cohort_seeds(patients: Mapping[str, Any], cases: Sequence[str] | None = None) -> list[int]:
    """The generator seeds of ``cases`` (default: all) from an exported cohort's ``patients.json``
    rows (``{case: {"seed": int, ...}}``); rows without a seed (a user's own data) are skipped."""
    out = []
    for case in (patients if cases is None else cases):
        row = patients.get(case)
        if isinstance(row, Mapping) and isinstance(row.get("seed"), (int, float)) and not isinstance(row["seed"], bool):
            out.append(int(row["seed"]))
    return out
