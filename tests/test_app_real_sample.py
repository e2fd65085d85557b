"""The whole application on real DICOM as public archives export it (issue 15, item 1).

``../shared/dicom-samples/abdomen-ct-j2k-siemens``: 20 slices of a real contrast-enhanced venous
series (JPEG 2000), anonymised with EMPTY Study/Series/SOP Instance UIDs and SOP Class UID, and no
SeriesNumber. It runs through ``python app`` with the single-phase policy (a temporary app.yaml
through ``PDAC_LN_CONFIG``); every output must be written and reference the UIDs the application
completed, and results.json must say they were derived. Bundled models where present, else
untrained stand-ins (the references do not depend on what the models find). What the models make of
real anatomy is issue 15's quality gate, not this test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import yaml

from app.application import required_models
from app_support import make_standin_models, run_app
from lnmet.dicom_io import scan_folder
from lnmet.model_manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_run(dicom_samples: Path, tmp_path_factory) -> dict:
    folder = dicom_samples / "abdomen-ct-j2k-siemens"
    tmp = tmp_path_factory.mktemp("real_sample")
    config = yaml.safe_load((ROOT / "app.yaml").read_text())
    config["phase_policy"]["missing_arterial"] = "single_phase"
    (tmp / "app.yaml").write_text(yaml.safe_dump(config))
    env = {"PDAC_LN_CONFIG": str(tmp / "app.yaml")}
    models = ROOT / "models"
    if not ((ROOT / MANIFEST_NAME).is_file() and all((models / m / "model.ts").is_file() for m in required_models())):
        models, manifest = make_standin_models(tmp / "standins", names=required_models())
        env["PDAC_LN_MODEL_MANIFEST"] = str(manifest)
    out = tmp / "out"
    done = run_app(["-i", str(folder), "-o", str(out), "-m", str(models)], env=env, timeout=900)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    meta_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for p in files}
    return {"done": done, "out": out, "folder": folder, "meta_uids": meta_uids}


def test_every_output_is_written(real_run):
    done = real_run["done"]
    assert done.returncode == 0, done.stderr[-4000:]
    for rel in ("SEG/seg.dcm", "SR/sr.dcm", "PDF/report.pdf", "PDF/report.dcm", "results.json"):
        assert (real_run["out"] / rel).is_file(), rel


def test_outputs_reference_the_uids_the_app_derived(real_run):
    assert real_run["done"].returncode == 0, real_run["done"].stderr[-4000:]
    out = real_run["out"]
    doc = json.loads((out / "results.json").read_text())
    venous = doc["phases"]["venous"]
    derived = {d["attribute"]: d for d in venous["derived_attributes"]}
    assert {"SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"} <= set(derived)
    assert "derived" in derived["SeriesInstanceUID"]["source"] and "file meta" in derived["SOPInstanceUID"]["source"]
    study_uid, series_uid = derived["StudyInstanceUID"]["value"], derived["SeriesInstanceUID"]["value"]
    assert doc["study"]["study_instance_uid"] == study_uid and venous["series_instance_uid"] == series_uid
    assert doc["single_phase"] is True and venous["series_number"] is None
    # The same UIDs as the loader derives in this process: deterministic, from the files' content.
    series = scan_folder(real_run["folder"]).series[0]
    assert (series.study_uid, series.series_uid) == (study_uid, series_uid)

    seg = pydicom.dcmread(out / "SEG" / "seg.dcm")
    sr = pydicom.dcmread(out / "SR" / "sr.dcm")
    pdf = pydicom.dcmread(out / "PDF" / "report.dcm")
    for ds in (seg, sr, pdf):
        assert ds.StudyInstanceUID == study_uid
    [ref_series] = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in ref_series.ReferencedInstanceSequence} == real_run["meta_uids"]
    assert seg.FrameOfReferenceUID == doc["study"]["frame_of_reference_uid"]
    [evidence_study] = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence_study.StudyInstanceUID == study_uid
    by_series = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
                 for s in evidence_study.ReferencedSeriesSequence}
    assert by_series[series_uid] == real_run["meta_uids"] and by_series[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    assert {str(i.ReferencedSOPInstanceUID) for i in pdf.get("SourceInstanceSequence", [])} <= real_run["meta_uids"]
    assert doc["outputs"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID


def test_the_intake_says_what_it_found(real_run):
    done = real_run["done"]
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads((real_run["out"] / "results.json").read_text())
    assert doc["phases"]["venous"]["content"]["brightest_vessel_hu"] is not None  # a contrast-enhanced series
    assert "portal-venous" not in doc["phases"]["venous"]["reason"]
    assert "lack identifiers, completed at intake" in done.stderr
