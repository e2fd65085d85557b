"""Shared fixtures: generated studies (tiny preset) and the real DICOM samples."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLES = ROOT.parent / "shared" / "dicom-samples"


@pytest.fixture(scope="session")
def dicom_samples() -> Path:
    """The real DICOM samples kept beside the project (../shared/dicom-samples)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"real DICOM samples not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def tiny_study():
    """A generated tiny study (seed 7), in memory."""
    from synthetic import generate_study

    return generate_study(seed=7, preset="tiny")


@pytest.fixture(scope="session")
def tiny_study_dir(tiny_study, tmp_path_factory) -> Path:
    """The same tiny study written to disk: <dir>/dicom/{arterial,venous}, <dir>/ground_truth."""
    from synthetic import write_study

    return write_study(tiny_study, tmp_path_factory.mktemp("tiny_study"))
