"""Fault injection into generated studies (synthetic/faults.py): each fault does what it says, on
the suite's tiny study, and the faulty study is written and read back like any other."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.labels import ORGAN_BY_KEY
from synthetic import write_study
from synthetic.faults import crop_out_pancreas, fill_stomach, remove_contrast, remove_organ, slab_around_pancreas, swap_phases


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _median(image: sitk.Image, labels: sitk.Image, key: str) -> float:
    return float(np.median(_arr(image)[_arr(labels) == ORGAN_BY_KEY[key].label]))


def test_swap_phases(tiny_study):
    faulty = swap_phases(tiny_study)
    assert faulty.venous is tiny_study.arterial and faulty.arterial is tiny_study.venous
    assert faulty.series == tiny_study.series  # descriptions and times stay: the images moved
    assert _median(faulty.venous, tiny_study.arterial_organs, "aorta") > _median(faulty.arterial, tiny_study.organs,
                                                                                 "aorta")


def test_remove_contrast_brings_enhanced_tissue_to_unenhanced_values(tiny_study):
    before = _median(tiny_study.venous, tiny_study.organs, "aorta")
    faulty = remove_contrast(tiny_study)
    assert before > 120
    assert _median(faulty.venous, tiny_study.organs, "aorta") == pytest.approx(40, abs=3)
    assert _median(faulty.venous, tiny_study.organs, "spleen") == pytest.approx(45, abs=3)
    assert _median(faulty.arterial, tiny_study.arterial_organs, "aorta") == pytest.approx(40, abs=8)
    fat = _arr(tiny_study.anatomy) == 11  # body fat: not enhanced, left as it was
    assert np.array_equal(_arr(faulty.venous)[fat], _arr(tiny_study.venous)[fat])


def test_remove_organ(tiny_study):
    faulty = remove_organ(tiny_study, "pancreas")
    label = ORGAN_BY_KEY["pancreas"].label
    assert not (_arr(faulty.organs) == label).any() and not (_arr(faulty.arterial_organs) == label).any()
    fat = float(np.median(_arr(tiny_study.venous)[_arr(tiny_study.anatomy) == 11]))
    assert _median(faulty.venous, tiny_study.organs, "pancreas") == pytest.approx(fat, abs=1)
    assert _median(faulty.arterial, tiny_study.arterial_organs, "pancreas") == pytest.approx(fat, abs=1)
    with pytest.raises(ValueError, match="no pancreas"):
        remove_organ(faulty, "pancreas")


def test_crop_out_pancreas_writes_a_shorter_series(tiny_study, tmp_path):
    faulty = crop_out_pancreas(tiny_study, min_slices=20)
    assert faulty.venous.GetSize()[2] == 20 and faulty.grid.shape[0] == 20
    pancreas = (_arr(faulty.organs) == ORGAN_BY_KEY["pancreas"].label).any(axis=(1, 2))
    assert pancreas[0], "the small field of view ends inside the pancreas"
    top = tiny_study.venous.TransformIndexToPhysicalPoint((0, 0, tiny_study.venous.GetSize()[2] - 1))
    assert faulty.venous.TransformIndexToPhysicalPoint((0, 0, 19)) == pytest.approx(top)
    case = write_study(faulty, tmp_path)
    assert len(list((case / "dicom" / "venous").glob("*.dcm"))) == 20


def test_slab_around_pancreas_keeps_every_image_on_one_shorter_grid(tiny_study):
    dz = tiny_study.grid.spacing[2]
    slab = slab_around_pancreas(tiny_study, 12 * dz)
    assert slab.grid.shape[0] == 12
    for name in ("venous", "arterial", "arterial_aligned", "organs", "anatomy", "pdac", "ln_instances",
                 "arterial_organs"):
        image = getattr(slab, name)
        assert image.GetSize()[2] == 12, name
        assert image.GetOrigin() == pytest.approx(slab.venous.GetOrigin()), name
    # centred on the pancreas: its middle slice lies in the slab's middle third
    full = (_arr(tiny_study.organs) == ORGAN_BY_KEY["pancreas"].label).any(axis=(1, 2)).nonzero()[0]
    mid_z = tiny_study.venous.TransformIndexToPhysicalPoint((0, 0, int((full[0] + full[-1]) // 2)))[2]
    first_z = slab.venous.GetOrigin()[2]
    assert 4 * dz <= mid_z - first_z <= 8 * dz
    whole = slab_around_pancreas(tiny_study, 10_000.0)
    assert whole.grid.shape[0] == tiny_study.grid.shape[0]


def test_fill_stomach_brings_its_water_and_gas_to_soft_tissue(tiny_study):
    from lnmet.labels import ANATOMY_LABELS

    anatomy = _arr(tiny_study.anatomy)
    lumen = np.isin(anatomy, [ANATOMY_LABELS["stomach_lumen"], ANATOMY_LABELS["stomach_gas"]])
    assert lumen.any() and (_arr(tiny_study.venous)[anatomy == ANATOMY_LABELS["stomach_gas"]] < -500).any()
    full = fill_stomach(tiny_study, hu=35.0)
    hu = _arr(full.venous)
    for name in ("stomach_lumen", "stomach_gas"):
        part = anatomy == ANATOMY_LABELS[name]
        if part.any():
            assert np.median(hu[part]) == pytest.approx(35.0, abs=1.0), name
    assert np.array_equal(hu[~lumen], _arr(tiny_study.venous)[~lumen])  # nothing else moves
    assert full.organs is tiny_study.organs  # the labels stay
