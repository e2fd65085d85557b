"""The intake chain (loader -> selector -> volumes -> registration) inside a real Holoscan
application (monai.deploy.core.Application), on a generated tiny study; and bad input stops the
application with the loader's error and nothing written."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import SimpleITK as sitk
from holoscan.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec

from lnmet.config import load_settings
from lnmet.geometry import working_grid
from operators.phase_registration import PhaseRegistrationOperator
from operators.phase_selector import PhaseSelectorOperator
from operators.series_to_volume import SeriesToVolumeOperator
from operators.study_loader import StudyLoaderOperator


class _Sink(Operator):
    """Receives ``registered_phases`` and writes a summary file (stands in for the publisher)."""

    def __init__(self, fragment: Fragment, *args, out: Path, **kwargs):
        self._out = out
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")

    def compute(self, op_input, op_output, context) -> None:
        reg = op_input.receive("registered_phases")
        summary = {
            "venous_series": reg.venous.series.series_instance_uid,
            "arterial_series": reg.arterial.series.series_instance_uid if reg.arterial else None,
            "working_size": reg.working_venous.GetSize(),
            "working_spacing": reg.working_venous.GetSpacing(),
            "working_arterial": sitk.GetArrayFromImage(reg.working_arterial) if reg.working_arterial else None,
            "working_venous": sitk.GetArrayFromImage(reg.working_venous),
            "single_phase": reg.single_phase,
            "has_transform": reg.transform is not None,
        }
        (self._out / "summary.pkl").write_bytes(pickle.dumps(summary))


class _IntakeApp(Application):
    def __init__(self, input_folder: Path, out: Path, settings, *args, **kwargs):
        self._in, self._out, self._settings = input_folder, out, settings
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        loader = StudyLoaderOperator(self, CountCondition(self, 1), input_folder=self._in, name="loader")
        selector = PhaseSelectorOperator(self, settings=self._settings, name="selector")
        volumes = SeriesToVolumeOperator(self, name="volumes")
        reg = PhaseRegistrationOperator(self, target_spacing_mm=(4.5, 4.5, 4.5), settings=self._settings,
                                        name="registration")
        sink = _Sink(self, out=self._out, name="sink")
        self.add_flow(loader, selector, {("dicom_series", "dicom_series")})
        self.add_flow(selector, volumes, {("phase_selection", "phase_selection")})
        self.add_flow(volumes, reg, {("venous_volume", "venous_volume"), ("arterial_volume", "arterial_volume")})
        self.add_flow(reg, sink, {("registered_phases", "registered_phases")})


@pytest.fixture(scope="module")
def quick_settings():
    s = load_settings()
    return dataclasses.replace(s, registration=dataclasses.replace(s.registration, affine_iterations=40,
                                                                    bspline_iterations=15))


def test_chain_runs_in_a_holoscan_application(tiny_study_dir: Path, tiny_study, quick_settings, tmp_path: Path) -> None:
    _IntakeApp(tiny_study_dir / "dicom", tmp_path, quick_settings).run()
    summary = pickle.loads((tmp_path / "summary.pkl").read_bytes())
    assert summary["venous_series"] == tiny_study.series["venous"]["SeriesInstanceUID"]
    assert summary["arterial_series"] == tiny_study.series["arterial"]["SeriesInstanceUID"]
    grid = working_grid(tiny_study.venous, (4.5, 4.5, 4.5))
    assert summary["working_size"] == grid.GetSize()
    assert summary["has_transform"] and not summary["single_phase"]
    assert summary["working_arterial"].shape == summary["working_venous"].shape


def test_single_phase_chain_passes_none_through_the_graph(tiny_study_dir: Path, quick_settings,
                                                          tmp_path: Path) -> None:
    import shutil
    shutil.copytree(tiny_study_dir / "dicom" / "venous", tmp_path / "in" / "venous")
    (tmp_path / "out").mkdir()
    settings = dataclasses.replace(quick_settings, missing_arterial="single_phase")
    _IntakeApp(tmp_path / "in", tmp_path / "out", settings).run()
    summary = pickle.loads((tmp_path / "out" / "summary.pkl").read_bytes())
    assert summary["single_phase"] and summary["arterial_series"] is None
    assert summary["working_arterial"] is None and not summary["has_transform"]


def test_empty_input_stops_the_application_and_writes_nothing(quick_settings, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception, match="no readable DICOM file"):
        _IntakeApp(tmp_path / "in", tmp_path / "out", quick_settings).run()
    assert not any((tmp_path / "out").iterdir())
