"""Synthetic two-phase contrast-enhanced CT studies of PDAC patients with lymph nodes.

``generate_study(seed, preset)`` builds one study in memory; ``write_study(study, folder)`` writes
it as a real DICOM study plus ground truth (NIfTI + JSON). See docs/ARCHITECTURE.md.
"""

from synthetic.grid import PRESETS, Grid, Preset
from synthetic.study import GENERATOR_VERSION, SyntheticStudy, generate_study

__all__ = ["PRESETS", "Grid", "Preset", "SyntheticStudy", "generate_study", "write_study", "GENERATOR_VERSION"]


def write_study(study, out_dir, **kwargs):
    """Write ``study`` under ``out_dir/<case_id>/`` (DICOM + ground truth); returns that folder."""
    from synthetic.writer import write_study as _write

    return _write(study, out_dir, **kwargs)
