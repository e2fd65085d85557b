"""Publishing: the output layout, atomicity (a failure leaves the folder as it was), refusal of an
unwritable folder, the builders and the publisher run as a Holoscan graph, and a real PACS
(Orthanc on loopback) accepting the source series and the three DICOM outputs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from holoscan.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

from lnmet.reporting import PDF_DICOM_PATH, PDF_PATH, RESULTS_JSON_PATH, SEG_PATH, SR_PATH
from lnmet.reporting.standin import results_from_study
from operators import output_publisher
from operators.output_publisher import OutputPublisherOperator, OutputPublishError, publish_outputs
from operators.pdf_report_builder import PDFReportBuilderOperator, build_pdf
from operators.results_json_builder import ResultsJSONBuilderOperator, build_results_document
from operators.seg_builder import SEGBuilderOperator, build_seg
from operators.sr_builder import SRBuilderOperator, build_sr

ROOT = Path(__file__).resolve().parent.parent
ALL_FILES = {SEG_PATH, SR_PATH, PDF_PATH, PDF_DICOM_PATH, RESULTS_JSON_PATH}


@pytest.fixture(scope="module")
def results(tiny_study, tiny_study_dir):
    return results_from_study(tiny_study, tiny_study_dir)


@pytest.fixture(scope="module")
def outputs(results):
    seg = build_seg(results)
    sr = build_sr(results, seg)
    pdf = build_pdf(results)
    return seg, sr, pdf, build_results_document(results, seg, sr, pdf)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_publish_layout(outputs, tmp_path):
    out = tmp_path / "out"
    written = publish_outputs(out, *outputs)
    assert set(written) == ALL_FILES == _files(out)  # nothing else left (no staging folder)
    seg, sr, pdf, doc = outputs
    assert pydicom.dcmread(out / SEG_PATH).SOPInstanceUID == seg.SOPInstanceUID
    assert pydicom.dcmread(out / SR_PATH).SOPInstanceUID == sr.SOPInstanceUID
    assert pydicom.dcmread(out / PDF_DICOM_PATH).SOPInstanceUID == pdf.dataset.SOPInstanceUID
    assert (out / PDF_PATH).read_bytes() == pdf.pdf_bytes
    assert json.loads((out / RESULTS_JSON_PATH).read_text()) == doc
    # Publishing again replaces the set as a whole; disabled outputs of the earlier run go away.
    publish_outputs(out, seg=seg, results_document=None)
    assert _files(out) == {SEG_PATH}


def test_publish_failure_leaves_the_folder_as_it_was(outputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seg, sr, pdf, doc = outputs
    publish_outputs(out, seg=seg)  # an earlier run's output
    before = {p: (out / p).read_bytes() for p in _files(out)}
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # fail in the middle of moving the new outputs into place
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(output_publisher.os, "replace", failing_replace)
    with pytest.raises(OutputPublishError, match="No space left"):
        publish_outputs(out, *outputs)
    monkeypatch.undo()
    assert {p: (out / p).read_bytes() for p in _files(out)} == before
    assert sorted(os.listdir(out)) == ["SEG"]


def test_publish_failure_while_writing_leaves_nothing(outputs, tmp_path):
    out = tmp_path / "fresh"
    seg, sr, pdf, doc = outputs
    broken = pydicom.Dataset()  # no SOP Class/Instance UID: cannot be written as a DICOM file
    with pytest.raises(Exception):
        publish_outputs(out, seg=seg, sr=broken)
    assert os.listdir(out) == []


def test_publish_refuses_unwritable_folder(outputs, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputPublishError, match=f"output path {blocker} exists and is not a folder"):
        publish_outputs(blocker, seg=outputs[0])
    with pytest.raises(OutputPublishError, match="cannot be created"):
        publish_outputs(blocker / "sub", seg=outputs[0])
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(output_publisher.os, "access", lambda path, mode: False)  # root ignores chmod
    with pytest.raises(OutputPublishError, match=f"output folder {folder} is not writable"):
        publish_outputs(folder, seg=outputs[0])
    assert os.listdir(folder) == []


def test_publish_refuses_results_that_name_other_objects(outputs, tmp_path):
    seg, sr, pdf, doc = outputs
    other_seg = copy.deepcopy(seg)
    other_seg.SOPInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(OutputPublishError, match="outputs.seg.sop_instance_uid"):
        publish_outputs(tmp_path / "out", other_seg, sr, pdf, doc)
    assert not (tmp_path / "out" / RESULTS_JSON_PATH).exists()


# ------------------------------------------------------------------------------------ the graph
class _Source(Operator):
    def __init__(self, fragment, *args, results=None, **kwargs):
        self.results = results
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("analysis_results")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(self.results, "analysis_results")


class _OutputsApp(Application):
    def __init__(self, *args, results=None, out=None, **kwargs):
        self.results, self.out = results, out
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        src = _Source(self, CountCondition(self, 1), results=self.results, name="source")
        seg = SEGBuilderOperator(self, name="seg_builder")
        sr = SRBuilderOperator(self, name="sr_builder")
        pdf = PDFReportBuilderOperator(self, name="pdf_report_builder")
        js = ResultsJSONBuilderOperator(self, name="results_json_builder")
        pub = OutputPublisherOperator(self, output_folder=self.out, name="output_publisher")
        ar = {("analysis_results", "analysis_results")}
        for op in (seg, sr, pdf, js):
            self.add_flow(src, op, ar)
        self.add_flow(seg, sr, {("seg_dataset", "seg_dataset")})
        self.add_flow(seg, js, {("seg_dataset", "seg_dataset")})
        self.add_flow(sr, js, {("sr_dataset", "sr_dataset")})
        self.add_flow(pdf, js, {("pdf_document", "pdf_document")})
        self.add_flow(seg, pub, {("seg_dataset", "seg_dataset")})
        self.add_flow(sr, pub, {("sr_dataset", "sr_dataset")})
        self.add_flow(pdf, pub, {("pdf_document", "pdf_document")})
        self.add_flow(js, pub, {("results_document", "results_document")})


def test_operators_run_as_a_graph(results, tmp_path):
    out = tmp_path / "graph_out"
    app = _OutputsApp([sys.executable], results=results, out=out)
    app.run()
    assert _files(out) == ALL_FILES
    doc = json.loads((out / RESULTS_JSON_PATH).read_text())
    sr = pydicom.dcmread(out / SR_PATH)
    seg = pydicom.dcmread(out / SEG_PATH)
    assert doc["outputs"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert doc["outputs"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence


# ------------------------------------------------------------------------------------ a real PACS
@pytest.fixture()
def orthanc():
    script = ROOT / "scripts" / "orthanc_server.sh"
    proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip(f"Orthanc is not installed and cannot be installed: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    info = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        yield info
    finally:
        subprocess.run(["bash", str(script), "stop", info["ORTHANC_DIR"]], timeout=60, check=False)


def _get(info, path: str):
    url = f"http://127.0.0.1:{info['ORTHANC_HTTP_PORT']}{path}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def test_orthanc_accepts_source_and_outputs(results, outputs, orthanc, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        Comprehensive3DSRStorage,
        CTImageStorage,
        EncapsulatedPDFStorage,
        SegmentationStorage,
    )

    seg, sr, pdf, doc = outputs
    out = tmp_path / "out"
    publish_outputs(out, *outputs)
    files = list(results.venous.source_files) + [out / SEG_PATH, out / SR_PATH, out / PDF_DICOM_PATH]
    ae = AE(ae_title=orthanc["ORTHANC_CLIENT_AET"])
    for cls in (CTImageStorage, SegmentationStorage, Comprehensive3DSRStorage, EncapsulatedPDFStorage):
        ae.add_requested_context(cls, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", int(orthanc["ORTHANC_DICOM_PORT"]), ae_title=orthanc["ORTHANC_AET"])
    assert assoc.is_established, "Orthanc refused the association"
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            assert status and status.Status == 0x0000, f"C-STORE of {f} failed: {status}"
    finally:
        assoc.release()

    expected = {  # SeriesInstanceUID -> (Modality, SOP Class UID, number of instances)
        results.venous.series.series_instance_uid: ("CT", CTImageStorage, len(results.venous.source_files)),
        seg.SeriesInstanceUID: ("SEG", SegmentationStorage, 1),
        sr.SeriesInstanceUID: ("SR", Comprehensive3DSRStorage, 1),
        pdf.dataset.SeriesInstanceUID: ("DOC", EncapsulatedPDFStorage, 1),
    }
    studies = _get(orthanc, "/studies?expand")
    assert len(studies) == 1
    assert studies[0]["MainDicomTags"]["StudyInstanceUID"] == results.venous.series.study_instance_uid
    assert len(studies[0]["Series"]) == len(expected)
    seen = {}
    for series in _get(orthanc, "/series?expand"):
        uid = series["MainDicomTags"]["SeriesInstanceUID"]
        instances = series["Instances"]
        classes = set()
        for inst in instances:
            tags = _get(orthanc, f"/instances/{inst}/simplified-tags")
            classes.add(tags["SOPClassUID"])
        seen[uid] = (series["MainDicomTags"]["Modality"], classes, len(instances))
    assert seen == {uid: (mod, {str(cls)}, n) for uid, (mod, cls, n) in expected.items()}
    # The stored SEG and SR are byte-for-byte what was written (Orthanc keeps the original files).
    for path, ds in ((out / SEG_PATH, seg), (out / SR_PATH, sr)):
        found = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{orthanc['ORTHANC_HTTP_PORT']}/tools/find",
            data=json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}}).encode(),
            method="POST"), timeout=30).read())
        assert len(found) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{orthanc['ORTHANC_HTTP_PORT']}/instances/{found[0]}/file",
                                    timeout=30) as resp:
            stored = pydicom.dcmread(__import__("io").BytesIO(resp.read()))
        assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.SOPClassUID == ds.SOPClassUID
        assert len(stored) == len(pydicom.dcmread(path))
