"""The application on real anatomy with the organs from the site (app.yaml ``organ_source``).

The real CT sample (../shared/real-ct-validation: one NON-contrast abdominal CT, 3 mm voxels, with
its TotalSegmentator labels) is written as a DICOM series; the app runs single-phase on it once with
``organ_source: input_seg`` (the labels as a DICOM SEG in the input, written with highdicom) and once
with ``organ_source: nifti`` (the TotalSegmentator multi-label file itself, on the NIfTI's own axis
order). Checked: the organ segments of the output SEG equal the site's (Dice >= 0.99 per class), the
organ map the attention map was built from holds the site's labels, and the LN search region (the
attention map, written by the ``PDAC_LN_DEBUG_DIR`` diagnostics) surrounds the real pancreas and
aorta; results.json, the SR and the PDF say which source gave each class. An unusable SEG stops the
run before registration, with no output; a missing NIfTI stops it at start-up.

With the bundled models when present, else untrained stand-ins (the site's organs do not depend on
the models). Nothing here is about the model's accuracy on this non-contrast scan.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from app.application import required_models
from app_support import last_error_line, make_standin_models, run_app
from lnmet.reporting import codes
from lnmet.geometry import working_grid
from lnmet.inference import labels_to_grid
from lnmet.labels import ORGAN_BY_KEY
from lnmet.model_manifest import MANIFEST_NAME
from lnmet.reporting.standin import load_phase
from organ_source_support import REAL_CLASSES, REAL_CT, REAL_LABELS, dice, write_organ_seg, write_real_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not REAL_CT.is_file(), reason=f"real CT sample not found at {REAL_CT}")
SHELL_MM = 15.0  # inside the Table 7 ranges of the pancreas (-5..20 mm) and the aorta (0..28 mm)


def _models(tmp: Path) -> tuple[Path, dict[str, str]]:
    models, manifest = ROOT / "models", ROOT / MANIFEST_NAME
    if manifest.is_file() and all((models / m).is_dir() and any((models / m).iterdir()) for m in required_models()):
        return models, {}
    models, manifest = make_standin_models(tmp / "standins", names=required_models())
    return models, {"PDAC_LN_MODEL_MANIFEST": str(manifest)}


def _config(tmp: Path, organ_source: str) -> Path:
    text = (ROOT / "app.yaml").read_text()
    text = text.replace("missing_arterial: error", "missing_arterial: single_phase")
    text = text.replace("\norgan_source: model\n", f"\norgan_source: {organ_source}\n")
    assert f"organ_source: {organ_source}" in text and "missing_arterial: single_phase" in text
    path = tmp / f"app_{organ_source}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    """The real CT as a DICOM series alone (folder ``ct``) and with a SEG of its labels (``ct_seg``)."""
    root = tmp_path_factory.mktemp("real_ct_app")
    study = write_real_study(root / "ct_seg")
    shutil.copytree(root / "ct_seg" / "ct", root / "ct" / "ct")
    models, env = _models(root)
    return {"root": root, **study, "models": models, "env": env}


@pytest.fixture(scope="module", params=["input_seg", "nifti"])
def run(request, real_study):
    mode = request.param
    root = real_study["root"]
    env = {**real_study["env"], "PDAC_LN_CONFIG": str(_config(root, mode)),
           "PDAC_LN_DEBUG_DIR": str(root / f"debug_{mode}")}
    if mode == "nifti":
        env["PDAC_LN_ORGAN_NIFTI"] = str(REAL_LABELS)
    out = root / f"out_{mode}"
    folder = root / ("ct_seg" if mode == "input_seg" else "ct")
    done = run_app(["-i", str(folder), "-o", str(out), "-m", str(real_study["models"])], env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"mode": mode, "out": out, "debug": root / f"debug_{mode}",
            "results": json.loads((out / "results.json").read_text())}


def test_organ_segments_of_the_output_seg_are_the_sites(run, real_study):
    seg = hd.seg.segread(run["out"] / "SEG" / "seg.dcm")
    numbers = {str(s.TrackingID): int(s.SegmentNumber) for s in seg.SegmentSequence}
    uids = [str(ds.SOPInstanceUID) for ds in real_study["datasets"]]
    for name in REAL_CLASSES:
        mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[numbers[f"organ:{name}"]],
                                                 combine_segments=False)[..., 0] > 0
        assert dice(mask, real_study["masks"][name]) >= 0.99, name


def test_attention_map_is_built_from_the_sites_organs_and_surrounds_them(run, real_study):
    organs = sitk.ReadImage(str(run["debug"] / "organs_working.nii.gz"))
    attention = sitk.GetArrayFromImage(sitk.ReadImage(str(run["debug"] / "attention.nii.gz")))
    working = sitk.GetArrayFromImage(organs)
    # The site's labels on the venous grid as the app reads it from the DICOM series, moved onto the
    # working grid as the app does, are what the map was built from.
    arr = sitk.GetArrayFromImage(real_study["labels"])
    relabelled = np.zeros(arr.shape, np.uint8)
    for name, value in REAL_CLASSES.items():
        relabelled[arr == value] = ORGAN_BY_KEY[name].label
    site_ref = sitk.GetImageFromArray(relabelled)
    site_ref.CopyInformation(load_phase(real_study["root"] / "ct" / "ct", "venous").image)
    grid = working_grid(site_ref, organs.GetSpacing())  # not the NIfTI's float32 copy of its geometry
    assert grid.GetSize() == organs.GetSize() and np.allclose(grid.GetOrigin(), organs.GetOrigin(), atol=1e-3)
    expected = sitk.GetArrayFromImage(labels_to_grid(site_ref, grid))
    for name in REAL_CLASSES:
        label = ORGAN_BY_KEY[name].label
        assert np.array_equal(working == label, expected == label), name
    spacing = organs.GetSpacing()[::-1]
    for name in ("pancreas", "aorta"):
        distance = ndimage.distance_transform_edt(expected != ORGAN_BY_KEY[name].label, sampling=spacing)
        shell = (distance > 0) & (distance <= SHELL_MM) & (working == 0)
        assert shell.sum() > 1000, name
        assert attention[shell].min() >= 0.99, f"the LN search region does not surround the {name}"
    far = ndimage.distance_transform_edt(working == 0, sampling=spacing) > 40.0
    if far.any():
        assert attention[far].max() == 0.0, "the LN search region reaches far from every organ/vessel"


def test_results_sr_and_pdf_say_which_source_gave_each_class(run):
    entry = run["results"]["organ_source"]
    mode = run["mode"]
    assert entry["setting"] == mode and "kept" in entry["merge_rule"]
    for name in REAL_CLASSES:
        assert entry["classes"][name]["source"] == mode, name
    for name in ("sma", "tc_sa", "lga", "cha_pha"):
        assert entry["classes"][name]["source"] == "model" and "organ_seg" in entry["classes"][name]["detail"]
    if mode == "input_seg":
        assert entry["classes"]["pancreas"]["detail"].startswith("segment ")
        assert entry["classes"]["esophagus"]["source"] == "model"  # no esophagus segment in this SEG
    else:
        assert entry["classes"]["pancreas"]["detail"] == "label 7 'pancreas' of totalsegmentator_labels.nii.gz"
        assert entry["classes"]["esophagus"]["source"] == "nifti"  # listed (empty) in the file's label table
    sr = pydicom.dcmread(run["out"] / "SR" / "sr.dcm")
    texts = [str(i.TextValue) for i in sr.ContentSequence[-1].ContentSequence
             if i.ConceptNameCodeSequence[0].CodeValue == codes.ORGAN_SOURCE.value]
    assert texts[0].startswith(f"Organs/vessels (organ_source: {mode})")
    assert any(t.startswith("Pancreas: site's") for t in texts)
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    first = " ".join(subprocess.run([exe, "-f", "1", "-l", "1", str(run["out"] / "PDF" / "report.pdf"), "-"],
                                    capture_output=True, text=True, check=True).stdout.split())
    words = {"input_seg": "from the site's DICOM SEG:", "nifti": "from the site's TotalSegmentator NIfTI:"}[mode]
    assert words in first and "Pancreas" in first[first.index(words):]


def test_seg_on_another_frame_of_reference_stops_before_registration(real_study, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(real_study["root"] / "ct", folder)
    write_organ_seg(real_study["masks"], real_study["datasets"], folder / "seg" / "seg.dcm",
                    frame_of_reference_uid=pydicom.uid.generate_uid())
    out = tmp_path / "out"
    env = {**real_study["env"], "PDAC_LN_CONFIG": str(_config(tmp_path, "input_seg"))}
    done = run_app(["-i", str(folder), "-o", str(out), "-m", str(real_study["models"])], env=env, timeout=600)
    assert done.returncode == 1
    assert "OrganSourceError" in last_error_line(done) and "another frame of reference" in last_error_line(done)
    logs = done.stdout + done.stderr
    assert "stage 'organ_source' started" in logs and "stage 'phase_registration' started" not in logs
    assert not out.exists()


def test_missing_totalsegmentator_output_stops_at_start(real_study, tmp_path):
    env = {**real_study["env"], "PDAC_LN_CONFIG": str(_config(tmp_path, "nifti")),
           "PDAC_LN_ORGAN_NIFTI": str(tmp_path / "nowhere")}
    done = run_app(["-i", str(real_study["root"] / "ct"), "-o", str(tmp_path / "out"), "-m",
                    str(real_study["models"])], env=env, timeout=600)
    assert done.returncode == 3
    assert "TotalSegmentator output" in last_error_line(done) and "not found" in last_error_line(done)
