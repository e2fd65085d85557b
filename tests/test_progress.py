"""Progress lines of the long stages (issue 15, item 5): throttling, registration by level and
iteration, sliding-window inference by window, the generator by stage."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet import progress as progress_module
from lnmet.config import load_settings
from lnmet.progress import Progress


def test_progress_is_throttled_and_notes_are_immediate(caplog) -> None:
    now = [0.0]
    p = Progress("work", log=logging.getLogger("test.progress"), every_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.progress"):
        assert not p.update(1, 10)  # too soon after the start
        now[0] = 5.5
        assert p.update(2, 10, "detail")
        now[0] = 6.0
        assert not p.update(3, 10)
        p.note("level 2/3")  # always logged
        now[0] = 12.0
        assert p.update(4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["work: 2/10 (20%); detail, 6 s", "work: level 2/3, 6 s", "work: 4, 12 s"]


@pytest.fixture()
def every_update(monkeypatch):
    """Every update logged (the default waits a few seconds between lines)."""
    monkeypatch.setattr(progress_module, "DEFAULT_EVERY_S", 0.0)


def test_registration_reports_levels_and_iterations(tiny_study, every_update, caplog) -> None:
    from lnmet.registration import register_phases

    reg = dataclasses.replace(load_settings().registration, affine_iterations=4, bspline_iterations=2)
    with caplog.at_level(logging.INFO, logger="lnmet.registration"):
        register_phases(tiny_study.venous, tiny_study.arterial, reg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("registration: ")]
    levels = len(reg.shrink_factors)
    for stage in ("affine", "B-spline"):
        for level in range(1, levels + 1):
            assert any(f"{stage} stage, level {level}/{levels}" in line for line in lines), (stage, level, lines)
    assert any("affine stage level 1/" in line and "metric" in line and "/4 (" in line for line in lines)


def test_sliding_window_inference_reports_windows(tmp_path, every_update, caplog) -> None:
    from app_support import make_standin_models
    from lnmet.inference import SegmentationModel, count_windows

    models, _ = make_standin_models(tmp_path, names=("organ_seg",))
    model = SegmentationModel.load(models / "organ_seg" / "model.ts", "cpu")
    image = np.full((2, 20, 70, 70), 40.0, np.float32)
    total = count_windows(image.shape[1:], model.patch_zyx, model.overlap)
    with caplog.at_level(logging.INFO, logger="lnmet.inference"):
        _, stats = model.segment(image, restrict_to_body=False)
    assert total == stats.windows_total > 1
    lines = [r.getMessage() for r in caplog.records if "sliding-window inference: " in r.getMessage()]
    assert any(f"{stats.windows_total}/{total} (100%)" in line for line in lines), lines


def test_generator_reports_its_stages() -> None:
    from synthetic import generate_study

    stages: list[str] = []
    study = generate_study(seed=7, preset="tiny", progress=stages.append)
    assert stages[0] == "sampling the patient" and len(stages) >= 5
    assert any("venous" in s for s in stages) and any("arterial" in s for s in stages)
    assert isinstance(study.venous, sitk.Image)
