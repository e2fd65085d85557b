"""Generator 2.0: the anatomy around the labelled structures, per-patient contrast, scanner noise and
streaks, and acquisition randomisation of the training export (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.acquisition import Acquisition, sample_acquisition
from synthetic.appearance import Contrast
from synthetic.grid import PRESETS, Grid
from synthetic.scanner import Scanner, add_streaks, kernel_noise
from synthetic.study import render_labels, sample_patient, sample_patient_anatomy

# The whole upper abdomen at 3 mm: every structure of generator 2.0 is in this field of view.
COARSE = Grid.centred((120, 120, 67), (3.0, 3.0, 3.0), (0.0, 15.0, -10.0))


@pytest.fixture(scope="module")
def patients():
    return [sample_patient(seed) for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def rendered(patients):
    return [render_labels(p, COARSE)[0] for p in patients]


def test_neighbours_of_the_labelled_structures_are_drawn(rendered):
    """Ribs, table, bowel with contents, kidneys with medulla, vessels and interlobular fat exist in
    every patient, and lie where they belong."""
    for labels in rendered:
        present = set(np.unique(labels).tolist())
        for name in ("bone_cortical", "costal_cartilage", "table_shell", "bowel", "gas", "kidney_medulla",
                     "renal_sinus_fat", "other_artery", "other_vein", "hepatic_vein", "adrenal", "skin",
                     "portal_splenic_vein", "ivc", "liver", "spleen", "pancreas", "pancreas_fat"):
            assert L[name] in present, f"{name} missing"
        mid = labels[:, :, labels.shape[2] // 2]  # the midline column: table behind the patient's back
        table_y = np.nonzero(mid == L["table_shell"])[1]
        skin_y = np.nonzero(mid == L["skin"])[1]
        assert table_y.size and table_y.min() >= skin_y.max()


def test_spleen_lies_posterolaterally_along_the_ribs():
    """Generator 2.1: the spleen sits in the posterolateral left upper quadrant (Gray's: along the
    10th rib, posterior pole at the depth of the left kidney), against the body wall, its axial long
    axis running forwards as it runs laterally; generator 2.0 put it mid-depth, axis the other way."""
    zyx_mm = np.array(COARSE.spacing[::-1])
    for seed in (21, 22, 23, 24):
        labels = sample_patient_anatomy(seed).render(COARSE)
        spleen, kidney, aorta = labels == L["spleen"], labels == L["kidney_left"], labels == L["aorta"]
        volume_ml = spleen.sum() * np.prod(zyx_mm) / 1000.0
        assert 100.0 <= volume_ml <= 400.0, f"seed {seed}: spleen {volume_ml:.0f} ml"
        c_spleen, c_kidney, c_aorta = (np.argwhere(m).mean(0) * zyx_mm for m in (spleen, kidney, aorta))
        assert c_spleen[1] - c_aorta[1] >= 10.0, f"seed {seed}: spleen not behind the aorta"
        assert abs(c_spleen[1] - c_kidney[1]) <= 25.0, f"seed {seed}: spleen not at the kidney's depth"
        assert c_spleen[2] - c_aorta[2] >= 60.0  # far to the left (x index grows to the patient's left)
        # against the wall: some spleen voxels touch the muscle wall, ribs or diaphragm
        from scipy import ndimage
        ring = ndimage.binary_dilation(spleen) & ~spleen
        assert np.isin(labels[ring], [L["muscle_wall"], L["bone_cortical"], L["bone_cancellous"],
                                      L["costal_cartilage"]]).any()
        # axial long axis: lateral (+x) goes with anterior (-y)
        pts = np.argwhere(spleen)[:, 1:] * zyx_mm[1:]  # (y, x) in mm
        w, v = np.linalg.eigh(np.cov(pts.T))
        dy, dx = v[:, -1]
        assert dy * dx < 0, f"seed {seed}: axial long axis {dx:.2f}, {dy:.2f}"


def test_spleen_is_broadest_in_its_upper_part_reaching_medially():
    """Generator 2.2: the spleen's upper part is its broad one, under the left dome, reaching
    medially towards the fundus (the real CT's spleen widens upwards to over 40 cm^2 per slice);
    2.1's spleen tapered upwards at the lateral wall."""
    zyx_mm = np.array(COARSE.spacing[::-1])
    for seed in (21, 22, 23, 24):
        spleen = sample_patient_anatomy(seed).render(COARSE) == L["spleen"]
        zs = np.nonzero(spleen.any(axis=(1, 2)))[0]
        mid = int(np.median(np.argwhere(spleen)[:, 0]))
        area = spleen.sum(axis=(1, 2)) * zyx_mm[1] * zyx_mm[2]
        upper, lower = area[mid:zs.max() + 1], area[zs.min():mid]
        assert upper.max() > lower.max(), f"seed {seed}: broadest slice below the spleen's middle"
        # medial edge (smallest x index: x grows to the patient's left) of each half
        medial_upper = np.argwhere(spleen[mid:])[:, 2].min() * zyx_mm[2]
        medial_lower = np.argwhere(spleen[:mid])[:, 2].min() * zyx_mm[2]
        assert medial_lower - medial_upper >= 6.0, f"seed {seed}: upper part not more medial"


def test_upper_spleen_meets_the_stomach_and_the_colon_rises_beside_it():
    """Generator 2.3: around the spleen's upper half the fundus lies against its gastric (anteromedial)
    surface and the colon's splenic flexure rises above its middle, as in real abdomens (Gray's);
    2.2's fundus lay forward with fat between (for these seeds 4-22% of the shell's anteromedial
    quarter stomach, 78-96% fat; 2.3: 59-74% stomach) and its colon turned at the spleen's middle
    (-3 to +3 mm from it; 2.3: 18-39 mm above)."""
    from scipy import ndimage

    for seed in (21, 22, 23, 24):
        labels = sample_patient_anatomy(seed).render(COARSE)
        spleen = labels == L["spleen"]
        mid = int(np.median(np.argwhere(spleen)[:, 0]))
        shell = ndimage.binary_dilation(spleen, iterations=3) & ~spleen
        shell[:mid] = False
        centre = np.argwhere(spleen[mid:]).mean(axis=0)[1:]
        pts = np.argwhere(shell)
        anteromedial = pts[(pts[:, 1] < centre[0]) & (pts[:, 2] < centre[1])]  # smaller y: anterior; smaller x: right
        stomach = np.isin(labels[tuple(anteromedial.T)], [L["stomach"], L["stomach_lumen"], L["stomach_gas"]]).mean()
        assert stomach >= 0.4, f"seed {seed}: {stomach:.2f} of the upper spleen's anteromedial shell is stomach"
        bowel = np.isin(labels, [L["bowel"], L["bowel_lumen"], L["faeces"], L["gas"]])
        bowel[..., : labels.shape[2] // 2] = False  # the patient's left half
        top = np.nonzero(bowel.any(axis=(1, 2)))[0].max()
        assert (top - mid) * COARSE.spacing[2] >= 15.0, f"seed {seed}: colon tops out {top - mid} slices above the spleen's middle"


def test_duodenal_gas_varies_and_belongs_to_the_duodenum():
    """Generator 2.1: supine, gas sits in the anterior duodenal lumen (the bulb first) in some patients
    and not in others; like the stomach's gas, it is duodenum in the organ label map."""
    from synthetic.lesions import organ_map

    shares = []
    for seed in range(4, 10):
        labels = sample_patient_anatomy(seed).render(COARSE)
        gas = labels == L["duodenum_gas"]
        duodenum = np.isin(labels, [L["duodenum"], L["duodenum_lumen"], L["duodenum_gas"]])
        shares.append(gas.sum() / duodenum.sum())
        if gas.any():
            assert (organ_map(labels)[gas] == L["duodenum"]).all()
            # non-dependent: the gas lies in front of (smaller y than) the fluid of the same loop
            y = np.nonzero(gas)[1].mean(), np.nonzero(labels == L["duodenum_lumen"])[1].mean()
            assert y[0] < y[1]
    assert min(shares) == 0.0 and max(shares) > 0.3, shares


def test_anatomy_alone_is_the_patients_anatomy(patients):
    alone = sample_patient_anatomy(11)
    body = patients[0].anatomy.body
    assert (alone.body.subcut, alone.body.semi_x, alone.body.arms_down) == (body.subcut, body.semi_x, body.arms_down)
    assert np.array_equal(alone.body.spine_centre, body.spine_centre)
    assert np.array_equal(alone.pancreas_path, patients[0].anatomy.pancreas_path)
    assert alone.pancreas_fat_fraction == patients[0].anatomy.pancreas_fat_fraction


def test_body_habitus_varies_between_patients():
    bodies = [sample_patient_anatomy(s).body for s in range(20, 40)]
    subcut = [b.subcut for b in bodies]
    arms = [b.arms_down for b in bodies]
    assert max(subcut) - min(subcut) > 10.0  # thin to obese
    assert any(arms) and not all(arms)  # arms beside the body in some patients, raised in most


def test_visceral_fat_at_the_pancreas_level_is_realistic(rendered):
    """Fat (subcutaneous + visceral) takes 25-55% of the body at the pancreas level (real CT: about
    26-42%; generator 1.x: ~40% of plain visceral fat in an ellipse)."""
    k = int(round((-5.0 - COARSE.origin[2]) / COARSE.spacing[2]))
    for labels in rendered:
        sl = labels[k]
        body = (sl > 0) & ~np.isin(sl, [L["table_shell"], L["table_core"]])
        fat = np.isin(sl, [L["body_fat"], L["subcutaneous_fat"]])
        assert 0.2 <= fat.sum() / body.sum() <= 0.6


def test_contrast_varies_per_patient_and_none_is_native():
    rng = np.random.default_rng(0)
    cons = [Contrast.sample(np.random.default_rng(s)) for s in range(30)]
    aorta_art = np.array([c.mean("aorta", "arterial") for c in cons])
    liver_ven = np.array([c.mean("liver", "venous") for c in cons])
    assert aorta_art.min() < 250 < 330 < aorta_art.max()  # weak to strong arterial enhancement
    assert 70 < np.median(liver_ven) < 120 and liver_ven.std() > 8
    assert np.all(aorta_art > np.array([c.mean("aorta", "venous") for c in cons]))
    none = Contrast(strength=0.0)
    assert none.mean("aorta", "arterial") == none.mean("aorta", "native") == pytest.approx(42.0)
    assert rng is not None


def test_kernel_noise_has_a_ramp_spectrum():
    """Filtered back-projection noise: little power at low frequency, a grain of a few voxels."""
    n = kernel_noise((4, 128, 128), (0.7, 0.7, 1.0), 0.3, np.random.default_rng(1))
    assert n.std() == pytest.approx(1.0, rel=0.05)
    spec = np.abs(np.fft.fft2(n[2])) ** 2
    f = np.sqrt(np.fft.fftfreq(128, 0.7)[:, None] ** 2 + np.fft.fftfreq(128, 0.7)[None, :] ** 2)
    low, mid = spec[(f > 0) & (f < 0.05)].mean(), spec[(f > 0.2) & (f < 0.35)].mean()
    assert mid > 3 * low  # white noise would have equal power
    # neighbouring pixels correlate (white noise would not)
    assert np.corrcoef(n[2, :, :-1].ravel(), n[2, :, 1:].ravel())[0, 1] > 0.2


def test_streaks_darken_the_line_between_dense_objects():
    grid = Grid.centred((100, 100, 1), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, np.uint8)
    labels[0, 45:55, 10:20] = L["bone_cortical"]
    labels[0, 45:55, 80:90] = L["bone_cortical"]
    hu = np.zeros(grid.shape, np.float32)
    out = add_streaks(hu.copy(), labels, grid, Scanner(noise_hu=0, kernel_cutoff=0.3, streak_hu=30.0),
                      np.random.default_rng(0))
    between = out[0, 48:52, 35:65].mean()
    away = out[0, 5:10, 35:65].mean()
    assert between < -15.0 and abs(away) < 5.0


def test_acquisition_randomisation_mixes_voxel_sizes():
    base = PRESETS["train"]
    acqs = [sample_acquisition(np.random.default_rng(s), base) for s in range(60)]
    kinds = {a.kind for a in acqs}
    assert kinds == {"preset", "fine", "thick"}
    thick = [a.slice_mm for a in acqs if a.kind == "thick"]
    assert min(thick) >= 2.0 and max(thick) <= 5.0
    assert any(a.z_range_mm is not None for a in acqs)
    p = Acquisition("thick", 0.8, 4.0, (-50.0, 50.0)).preset(base)
    assert p.spacing == (0.8, 0.8, 4.0) and p.size[2] == 25
    assert p.noise_hu < base.noise_hu  # thicker slices, less noise


def test_random_acquisition_export_is_resampled_to_the_training_grid(tmp_path):
    """A case acquired at another voxel size ends on the preset's grid (the app's resampling), with
    labels rendered on that grid that match the image (the aorta is bright where it is labelled)."""
    from synthetic.nnunet import export_nnunet

    seed = next(s for s in range(200) if sample_acquisition(np.random.default_rng([20241, s, 11]), PRESETS["tiny"]).kind
                == "thick")
    export_nnunet(tmp_path, [seed], "tiny", acquisition="random")
    case = f"SYN{seed:06d}"
    ds = tmp_path / "Dataset501_PancreasOrgans"
    img = sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0000.nii.gz"))
    lab = sitk.ReadImage(str(ds / "labelsTr" / f"{case}.nii.gz"))
    anat = sitk.ReadImage(str(ds / "anatomyTr" / f"{case}.nii.gz"))
    assert img.GetSpacing() == pytest.approx(PRESETS["tiny"].spacing)
    assert img.GetSize() == lab.GetSize() == anat.GetSize()
    a, l = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    assert np.median(a[l == 4]) > 150  # arterial channel: the aorta enhances
    row = json.loads((tmp_path / "patients.json").read_text())[case]
    assert row["acquisition"]["kind"] == "thick" and row["contrast"]["mean_hu"]["arterial"]["aorta"] > 150


def test_an_empty_stomach_is_a_collapsed_thick_walled_band():
    """Generator 2.5: fasting patients' stomach body and antrum are collapsed, with little lumen; the
    others' are distended. Both kinds occur, and the collapsed ones hold far less lumen per stomach."""
    anatomies = [sample_patient_anatomy(seed) for seed in range(40, 60)]
    collapsed = [a.stomach_collapsed for a in anatomies]
    assert 0.25 <= np.mean(collapsed) <= 0.75, collapsed
    lumen_share = {True: [], False: []}
    for a in [a for a in anatomies if a.stomach_collapsed][:2] + [a for a in anatomies if not a.stomach_collapsed][:2]:
        labels = a.render(COARSE)
        stomach = labels == L["stomach"]
        lumen = np.isin(labels, [L["stomach_lumen"], L["stomach_gas"]])
        # the antrum: the lower half of the stomach's slices (z grows to the head)
        zs = np.nonzero((stomach | lumen).any(axis=(1, 2)))[0]
        lower = slice(zs.min(), (zs.min() + zs.max()) // 2)
        lumen_share[a.stomach_collapsed].append(lumen[lower].sum() / max((stomach[lower] | lumen[lower]).sum(), 1))
    assert max(lumen_share[True]) < 0.4 < min(lumen_share[False]), lumen_share
