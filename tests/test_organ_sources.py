"""Organ source from the site (lnmet.organ_sources): settings, the mapping, the SEG and NIfTI readers
with their refusals, the merge rule, and the per-class source in results.json, SR and PDF.

SEG and NIfTI cases use the real CT sample (../shared/real-ct-validation, written as a DICOM series
with its TotalSegmentator labels as a DICOM SEG) and a generated tiny study (all ten classes).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import types

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.startup import StartupError, check_organ_source
from lnmet.config import ORGAN_NIFTI_ENV, DEFAULT_CONFIG_PATH, SettingsError, load_settings, parse_settings
from lnmet.dicom_io import scan_folder
from lnmet.reporting import codes
from lnmet.inference import labels_to_grid
from lnmet.labels import ORGAN_BY_KEY, ORGAN_CLASSES
from lnmet.organ_sources import (
    MERGE_RULE,
    OrganSourceError,
    choose_seg,
    classify_segments,
    locate_nifti,
    merge_labels,
    organ_sources,
    read_nifti_organs,
    read_seg_organs,
    same_voxel_grid,
)
from lnmet.reporting.standin import load_phase, results_from_study
from lnmet.types import SiteOrgans
from organ_source_support import (REAL_CLASSES, REAL_CT, REAL_LABELS, dice, read_real_ct, write_ct_series,
                                   write_organ_seg, write_real_study)

pytestmark = pytest.mark.skipif(not REAL_CT.is_file(), reason=f"real CT sample not found at {REAL_CT}")


# ---------------------------------------------------------------------------------------------- settings


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_default_is_the_model_and_bad_values_are_named(monkeypatch):
    monkeypatch.delenv(ORGAN_NIFTI_ENV, raising=False)
    assert load_settings().organ_source == "model"
    raw = _raw()
    del raw["organ_source"]
    assert parse_settings(raw).organ_source == "model"
    raw["organ_source"] = "totalsegmentator"
    with pytest.raises(SettingsError, match=r"'organ_source' must be one of model, input_seg, nifti, got 'totalsegmentator'"):
        parse_settings(raw)
    raw = {**_raw(), "organ_source": "nifti", "organ_nifti_path": None}
    with pytest.raises(SettingsError, match=rf"'organ_source' is 'nifti' but .*'organ_nifti_path' or .*{ORGAN_NIFTI_ENV}"):
        parse_settings(raw)
    with pytest.raises(SettingsError, match="'organ_nifti_path' must be a path"):
        parse_settings({**_raw(), "organ_nifti_path": 3})


def test_nifti_path_from_setting_or_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ORGAN_NIFTI_ENV, raising=False)
    raw = {**_raw(), "organ_source": "nifti", "organ_nifti_path": "/from/app.yaml"}
    assert parse_settings(raw).organ_nifti_path == "/from/app.yaml"
    monkeypatch.setenv(ORGAN_NIFTI_ENV, "/from/env")
    assert parse_settings(raw).organ_nifti_path == "/from/env"
    with pytest.raises(StartupError, match="organ source: TotalSegmentator output /from/env .* not found"):
        check_organ_source(parse_settings(raw))
    monkeypatch.setenv(ORGAN_NIFTI_ENV, str(REAL_LABELS))
    check_organ_source(parse_settings(raw))  # exists: no error


# ---------------------------------------------------------------------------------------------- mapping


def _segment(number: int, label: str, value: str, scheme: str = "SCT", modifier: tuple[str, str] | None = None):
    item = Dataset()
    item.SegmentNumber = number
    item.SegmentLabel = label
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, label
    if modifier:
        mod = Dataset()
        mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = modifier[0], "SCT", modifier[1]
        code.SegmentedPropertyTypeModifierCodeSequence = [mod]
    item.SegmentedPropertyTypeCodeSequence = [code]
    return item


def test_segments_recognised_by_code_then_by_label():
    ds = Dataset()
    ds.SegmentSequence = [
        _segment(1, "organ 1", "15776009"),  # pancreas by code, whatever the label
        _segment(2, "Milz", "T-C3000", scheme="SRT"),  # spleen by its legacy SNOMED-RT code
        _segment(3, "Superior_Mesenteric-Artery", "85756007"),  # "Tissue": by its label
        _segment(4, "liver", "10200004"),  # Liver: neither code nor label is a class of the attention map
        _segment(5, "gastric artery", "23771002", modifier=("24028007", "Right")),  # right: not the LGA
        _segment(6, "gastric artery", "23771002", modifier=("7771000", "Left")),
        _segment(7, "splenic artery", "22083002"),  # part of TC & SA
        _segment(8, "celiac_trunk", "85756007"),
        _segment(9, "kidney_left", "64033007"),
    ]
    found = {n: key for n, (key, _) in classify_segments(ds).items()}
    assert found == {1: "pancreas", 2: "spleen", 3: "sma", 6: "lga", 7: "tc_sa", 8: "tc_sa"}
    assert "by its label" in classify_segments(ds)[3][1] and "code SCT 15776009" in classify_segments(ds)[1][1]


def test_merge_rule_site_wins_model_fills_only_missing_classes_in_background():
    site = np.array([0, 0, 0, 5, 5, 1, 0, 0], np.uint8)  # pancreas and spleen from the site
    model = np.array([0, 7, 5, 7, 1, 3, 1, 10], np.uint8)
    out = merge_labels(site, model, ["pancreas", "spleen", "stomach"])
    # site voxels unchanged; SMA (7) and CHA (10) fill background; the model's pancreas (5), spleen
    # (1) and stomach (3: a class the site gives, although empty there) are dropped.
    assert out.tolist() == [0, 7, 0, 5, 5, 1, 0, 10]
    assert merge_labels(site, None, ["pancreas"]).tolist() == site.tolist()


# ---------------------------------------------------------------------------------------------- DICOM SEG


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory):
    """The real CT as a DICOM series, its labels (on that grid) and SEGs made from them."""
    root = tmp_path_factory.mktemp("real_ct")
    study = write_real_study(root / "study")
    return {"root": root, **study, "venous": load_phase(root / "study" / "ct", "venous")}


def _study_with(real_ct, name: str, *segs) -> list:
    """An input folder with the CT and the given SEG files (callables writing into a path)."""
    folder = real_ct["root"] / name
    if not folder.exists():
        shutil.copytree(real_ct["root"] / "study" / "ct", folder / "ct")
        for i, write in enumerate(segs):
            write(folder / f"seg{i}" / "seg.dcm")
    return scan_folder(folder).series


def _assert_same_labels(site: SiteOrgans, real_ct) -> None:
    got = sitk.GetArrayFromImage(site.labels)
    for name in REAL_CLASSES:
        assert dice(got == ORGAN_BY_KEY[name].label, real_ct["masks"][name]) == 1.0, name
    assert site.labels.GetSize() == real_ct["venous"].image.GetSize()


def test_seg_on_the_venous_series_is_read_exactly(real_ct):
    series = scan_folder(real_ct["root"] / "study").series
    chosen = choose_seg(series, real_ct["venous"])
    site = read_seg_organs(chosen, real_ct["venous"].image)
    assert site.source == "input_seg" and "TotalSegmentator" in site.description
    assert set(site.classes) == set(REAL_CLASSES)
    assert "code SCT 15776009" in site.classes["pancreas"]
    _assert_same_labels(site, real_ct)


def test_seg_recognised_by_labels_when_codes_are_generic(real_ct):
    series = _study_with(real_ct, "labels_only", lambda p: write_organ_seg(
        real_ct["masks"], real_ct["datasets"], p, labels_only=list(REAL_CLASSES)))
    site = read_seg_organs(choose_seg(series, real_ct["venous"]), real_ct["venous"].image)
    assert all("by its label" in how for how in site.classes.values())
    _assert_same_labels(site, real_ct)


def test_no_seg_in_the_input_is_refused(real_ct):
    series = _study_with(real_ct, "no_seg")
    with pytest.raises(OrganSourceError, match="organ_source is input_seg but the input holds no DICOM SEG"):
        choose_seg(series, real_ct["venous"])


def test_seg_of_another_series_is_refused(real_ct, tmp_path):
    ct, _ = read_real_ct()
    other = write_ct_series(ct, tmp_path / "other", description="another reconstruction",
                            study_uid=real_ct["datasets"][0].StudyInstanceUID)
    series = _study_with(real_ct, "other_series", lambda p: write_organ_seg(real_ct["masks"], other, p))
    with pytest.raises(OrganSourceError, match=r"no DICOM SEG in the input references the venous series "
                                               rf"{real_ct['venous'].series.series_instance_uid}.*references series "
                                               rf"{other[0].SeriesInstanceUID}"):
        choose_seg(series, real_ct["venous"])


def test_seg_on_another_frame_of_reference_is_refused(real_ct):
    series = _study_with(real_ct, "other_frame", lambda p: write_organ_seg(
        real_ct["masks"], real_ct["datasets"], p, frame_of_reference_uid=generate_uid()))
    with pytest.raises(OrganSourceError, match="lies on another frame of reference than the venous series"):
        choose_seg(series, real_ct["venous"])


def test_seg_without_pancreas_is_refused(real_ct):
    no_pancreas = {k: v for k, v in real_ct["masks"].items() if k != "pancreas"}
    series = _study_with(real_ct, "no_pancreas", lambda p: write_organ_seg(no_pancreas, real_ct["datasets"], p))
    with pytest.raises(OrganSourceError, match=r"lacks the pancreas .*'spleen', 'stomach', 'duodenum', 'aorta'"):
        choose_seg(series, real_ct["venous"])


def test_the_most_recent_usable_seg_is_chosen(real_ct):
    def older(p):
        write_organ_seg(real_ct["masks"], real_ct["datasets"], p, series_description="older")

    def newer(p):
        seg = write_organ_seg(real_ct["masks"], real_ct["datasets"], p, series_description="newer")
        seg.ContentDate, seg.ContentTime = "29991231", "235959"
        seg.save_as(p)

    series = _study_with(real_ct, "two_segs", older, newer)
    assert choose_seg(series, real_ct["venous"]).get("SeriesDescription") == "newer"


# ---------------------------------------------------------------------------------------------- NIfTI


def test_totalsegmentator_multilabel_file_with_its_label_table(real_ct):
    """The shared labels file lies on the NIfTI's own (RAS-flipped) grid, not the DICOM series'
    axis order: the same voxels, so it is accepted and placed exactly."""
    site = read_nifti_organs(REAL_LABELS, real_ct["venous"].image)
    assert site.source == "nifti" and "label table in the file" in site.description
    assert site.classes["pancreas"] == "label 7 'pancreas' of totalsegmentator_labels.nii.gz"
    assert "esophagus" in site.classes  # listed by TotalSegmentator, empty here: not taken from the model
    _assert_same_labels(site, real_ct)


def test_multilabel_without_label_table_uses_the_v2_total_values(real_ct, tmp_path):
    path = tmp_path / "seg.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(REAL_LABELS)), str(path))  # SimpleITK writes no label table
    site = read_nifti_organs(path, real_ct["venous"].image)
    assert "TotalSegmentator v2 'total' label values" in site.description
    assert set(site.classes) == {"spleen", "stomach", "pancreas", "esophagus", "duodenum", "aorta"}
    _assert_same_labels(site, real_ct)


def _structure_folder(folder, skip=(), empty=()):
    labels = sitk.ReadImage(str(REAL_LABELS))
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in {**REAL_CLASSES, "liver": 5}.items():
        if name in skip:
            continue
        mask = sitk.Cast(labels == value, sitk.sitkUInt8) * (0 if name in empty else 1)
        sitk.WriteImage(mask, str(folder / f"{name}.nii.gz"))
    return folder


def test_one_nifti_per_structure(real_ct, tmp_path):
    folder = _structure_folder(tmp_path / "ts")
    assert set(locate_nifti(folder).structure_files) == set(REAL_CLASSES)  # liver.nii.gz is not a class
    site = read_nifti_organs(folder, real_ct["venous"].image)
    assert site.classes["pancreas"] == "pancreas.nii.gz"
    _assert_same_labels(site, real_ct)


def test_nifti_refusals(real_ct, tmp_path):
    ref = real_ct["venous"].image
    with pytest.raises(OrganSourceError, match=r"lacks the pancreas \(structures found: .*spleen.nii.gz"):
        read_nifti_organs(_structure_folder(tmp_path / "a", skip=("pancreas",)), ref)
    with pytest.raises(OrganSourceError, match="the pancreas is empty on the venous series' grid"):
        read_nifti_organs(_structure_folder(tmp_path / "b", empty=("pancreas",)), ref)
    cropped = tmp_path / "cropped.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(REAL_LABELS))[:, :, 1:], str(cropped))
    with pytest.raises(OrganSourceError, match="does not lie on the venous series' voxel grid"):
        read_nifti_organs(cropped, ref)
    (tmp_path / "c").mkdir()
    for name in ("x.nii.gz", "y.nii.gz"):
        shutil.copy(REAL_LABELS, tmp_path / "c" / name)
    with pytest.raises(OrganSourceError, match="holds 2 NIfTI file.* none named after a structure"):
        locate_nifti(tmp_path / "c")
    with pytest.raises(OrganSourceError, match="not found"):
        locate_nifti(tmp_path / "missing")


def test_same_voxel_grid_allows_axis_flips_only():
    ref = sitk.Image([4, 5, 6], sitk.sitkUInt8)
    ref.SetSpacing([1.0, 2.0, 3.0])
    flipped = sitk.Flip(ref, [True, False, True])
    assert same_voxel_grid(flipped, ref) and same_voxel_grid(sitk.DICOMOrient(ref, "RAS"), ref)
    shifted = sitk.Image(ref)
    shifted.SetOrigin([0.5, 0.0, 0.0])
    assert not same_voxel_grid(shifted, ref)
    finer = sitk.Image([8, 5, 6], sitk.sitkUInt8)
    finer.SetSpacing([0.5, 2.0, 3.0])
    assert not same_voxel_grid(finer, ref)


# ---------------------------------------------------------------------------------------------- operator


def test_organ_segmentation_merges_site_and_model(tiny_study, tiny_study_dir, monkeypatch):
    """OrganSegmentation with a site source: the site's classes exactly, the model's other classes
    only in voxels the site leaves unlabelled; with all ten classes from the site the model is not run.
    The model's output is made known (the ground truth shifted by two voxels) by standing in for it."""
    import operators.organ_segmentation as organ_op
    from lnmet.geometry import resample_labels
    from operators.phase_registration import register_and_resample

    venous = load_phase(tiny_study_dir / "dicom" / "venous", "venous")
    registered = register_and_resample(venous, None, load_settings(), (1.5, 1.5, 1.5))
    truth = results_from_study(tiny_study, tiny_study_dir).organs
    truth_arr = sitk.GetArrayFromImage(truth)
    model_ref = sitk.GetImageFromArray(np.roll(truth_arr, 2, axis=2))
    model_ref.CopyInformation(truth)
    model_work = resample_labels(model_ref, registered.working_venous, smooth=False)
    calls = []

    def model_segments(reg, model):
        calls.append(model)
        return model_work, model_ref

    monkeypatch.setattr(organ_op, "segment_organs", model_segments)
    model = types.SimpleNamespace(name="organ_seg", metadata={"version": "0.1.0"}, spacing_mm=(1.5, 1.5, 1.5),
                                  channel_names=["CT_arterial", "CT_venous"])
    six = ["spleen", "esophagus", "stomach", "aorta", "pancreas", "duodenum"]
    keep = np.isin(truth_arr, [ORGAN_BY_KEY[k].label for k in six])
    site_img = sitk.GetImageFromArray(np.where(keep, truth_arr, 0).astype(np.uint8))
    site_img.CopyInformation(truth)
    site = SiteOrgans("input_seg", "test SEG", site_img, {k: f"segment {k}" for k in six})

    working, reference, sources = organ_op.organs_with_site(registered, model, site, "input_seg")
    for out_img, site_on_grid, mod_img in ((reference, site_img, model_ref),
                                           (working, labels_to_grid(site_img, working), model_work)):
        out, site_arr, mod = (sitk.GetArrayFromImage(i) for i in (out_img, site_on_grid, mod_img))
        assert np.array_equal(out[site_arr > 0], site_arr[site_arr > 0])  # the site's labels, all of them
        lacking = [ORGAN_BY_KEY[k].label for k in ("sma", "tc_sa", "lga", "cha_pha")]
        fill = (site_arr == 0) & np.isin(mod, lacking)
        assert fill.any() and (np.isin(mod, lacking) & (site_arr > 0)).any()  # the case has both
        assert np.array_equal(out[fill], mod[fill])  # the model's vessels where the site has nothing
        assert np.all(out[(site_arr == 0) & ~fill] == 0)  # the model's organs of the site's classes dropped
    assert working.GetSize() == registered.working_venous.GetSize() and len(calls) == 1
    assert sources.per_class["pancreas"] == "input_seg" and sources.per_class["sma"] == "model"
    assert sources.detail["sma"] == "bundled model organ_seg 0.1.0" and sources.merge_rule == MERGE_RULE

    site_all = SiteOrgans("nifti", "all", truth, {c.key: c.key for c in ORGAN_CLASSES})
    _, reference, sources = organ_op.organs_with_site(registered, model, site_all, "nifti")
    assert len(calls) == 1, "the model ran although the site gave every class"
    assert np.array_equal(sitk.GetArrayFromImage(reference), truth_arr)
    assert set(sources.per_class.values()) == {"nifti"}


# ---------------------------------------------------------------------------------------------- outputs


def test_outputs_say_which_source_gave_each_class(tiny_study, tiny_study_dir, tmp_path):
    from operators.pdf_report_builder import build_pdf, expected_page_count
    from operators.results_json_builder import build_results_document
    from operators.seg_builder import build_seg
    from operators.sr_builder import build_sr

    base = results_from_study(tiny_study, tiny_study_dir)
    site = SiteOrgans("input_seg", "DICOM SEG series 300 'TotalSegmentator'", base.organs,
                      {k: f"segment {i} '{k}'" for i, k in enumerate(REAL_CLASSES, start=1)})
    results = dataclasses.replace(base, organ_sources=organ_sources("input_seg", site, "bundled model organ_seg 0.1.0"))
    seg = build_seg(results)
    doc = build_results_document(results, seg, build_sr(results, seg), None)
    entry = doc["organ_source"]
    assert entry["setting"] == "input_seg" and entry["merge_rule"] == MERGE_RULE
    assert entry["classes"]["pancreas"] == {"source": "input_seg", "detail": "segment 3 'pancreas'"}
    assert entry["classes"]["lga"] == {"source": "model", "detail": "bundled model organ_seg 0.1.0"}
    assert build_results_document(base, seg, None, None)["organ_source"] is None

    sr = build_sr(results, seg)
    texts = [str(i.TextValue) for i in sr.ContentSequence[-1].ContentSequence
             if i.ConceptNameCodeSequence[0].CodeValue == codes.ORGAN_SOURCE.value]
    assert texts[0].startswith("Organs/vessels (organ_source: input_seg): DICOM SEG series 300")
    assert "Pancreas: site's DICOM SEG (segment 3 'pancreas')" in texts
    assert "Superior mesenteric artery: bundled organ model (bundled model organ_seg 0.1.0)" in texts
    assert len(texts) == 1 + len(ORGAN_CLASSES)

    pdf = build_pdf(results)
    n_key = int(results.tumour.found) + len(results.positive_nodes)
    assert pdf.page_count == expected_page_count(n_key, len(results.lymph_nodes))  # still fits page 1
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf.pdf_bytes)
    first = " ".join(subprocess.run([exe, "-f", "1", "-l", "1", str(path), "-"], capture_output=True, text=True,
                                    check=True).stdout.split())
    assert "from the site's DICOM SEG: Spleen, Stomach, Aorta, Pancreas, Duodenum" in first  # ORGAN_CLASSES order
    assert "from the bundled organ model: Esophagus, Superior mesenteric artery" in first
    assert "the site's label is kept" in first
