"""Acceptance test in a real viewer: the SEG and the SR of a generated tiny study, stored in Orthanc
(loopback, DICOMweb plugin), opened in the OHIF 3.13.2 build (npm @ohif/app) in headless chromium.

Asserts what a radiologist would see: every segment of the SEG listed by name (one per lymph node),
every SR finding listed in the measurement panel with its long and short axis, the axes drawn on the
image, and no error boundary, uncaught exception or console error on the way. Screenshots are saved
under ``build/test-artifacts/viewer/`` (and the pytest temporary folder) for people to look at.

Skipped, saying why, only when chromium, Orthanc's DICOMweb plugin or the OHIF build cannot be
installed (``scripts/setup.sh`` installs all three, so CI runs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lnmet.reporting.standin import results_from_study
from operators.seg_builder import build_seg, ln_segment_label, nodes_in_report_order
from operators.sr_builder import build_sr
from tests.ohif_viewer import OHIF_DIST, Browser, ViewerServer, chromium_path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts" / "viewer"
SEG_SERIES, SR_SERIES = "9101", "9102"
# Suppress the first-visit tour (OHIF keeps the tours shown in localStorage).
BEFORE_LOAD = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}"


def _install_ohif() -> None:
    if (OHIF_DIST / "index.html").is_file():
        return
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install_ohif.sh")], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"the OHIF viewer build cannot be installed: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture()
def orthanc_dicomweb():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; scripts/setup.sh installs it)")
    _install_ohif()
    script = ROOT / "scripts" / "orthanc_server.sh"
    proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ORTHANC_DICOMWEB": "1"})
    if proc.returncode == 3:
        pytest.skip(f"Orthanc with DICOMweb is not installed and cannot be installed: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    info = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        yield info
    finally:
        subprocess.run(["bash", str(script), "stop", info["ORTHANC_DIR"]], timeout=60, check=False)


def _upload(port: int, paths) -> None:
    for path in paths:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/instances", data=Path(path).read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200, f"Orthanc refused {path}"


def _js_texts(selector: str) -> str:
    return f"[...document.querySelectorAll({selector!r})].map(e => e.innerText)"


def test_ohif_lists_and_draws_seg_and_sr(tiny_study, tiny_study_dir, orthanc_dicomweb, tmp_path):
    results = results_from_study(tiny_study, tiny_study_dir)
    seg, sr = build_seg(results), None
    sr = build_sr(results, seg)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    _upload(int(orthanc_dicomweb["ORTHANC_HTTP_PORT"]), [*results.venous.source_files, seg_path, sr_path])
    expected_segments = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    assert [ln_segment_label(n) for n in nodes_in_report_order(results)] == expected_segments[-len(results.lymph_nodes):]
    n_findings = len(results.lymph_nodes) + int(results.tumour.found)
    shots = tmp_path / "screenshots"

    def shot(browser: Browser, name: str) -> None:
        path = browser.screenshot(shots / name)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTIFACTS / name)

    study = results.venous.series.study_instance_uid
    with ViewerServer(OHIF_DIST, int(orthanc_dicomweb["ORTHANC_HTTP_PORT"])) as viewer, \
            Browser(tmp_path / "chromium") as browser:
        try:
            browser.navigate(f"{viewer.url}/viewer?StudyInstanceUIDs={study}", before_load_js=BEFORE_LOAD)
            browser.wait_for(f"!!(document.querySelector('[data-series=\"{SEG_SERIES}\"]') && "
                             f"document.querySelector('[data-series=\"{SR_SERIES}\"]'))", 120,
                             "the study browser to show the SEG and SR series")
            browser.wait_for("document.querySelectorAll('[data-cy=viewport-pane] canvas').length > 0", 60,
                             "the CT series in the viewport")
            shot(browser, "1-study.png")

            # The SEG: opened from its thumbnail (no prompt: disableConfirmationPrompts), segments listed.
            browser.click(f'[data-series="{SEG_SERIES}"]', count=2)
            browser.wait_for("window.services && window.services.segmentationService.getSegmentations().length > 0",
                             120, "the SEG to be loaded")
            browser.click("[data-cy=panelSegmentation-btn]")
            listed = browser.wait_for(
                f"(() => {{ const t = document.body.innerText; const want = {expected_segments!r};"
                " return want.every(n => t.includes(n)) ? want : null; })()", 120,
                f"the segment list to show all {len(expected_segments)} segment names")
            assert listed == expected_segments
            shot(browser, "2-seg.png")

            # The SR: opened from its thumbnail, hydrated into the measurement panel.
            browser.click(f'[data-series="{SR_SERIES}"]', count=2)
            browser.wait_for(f"window.services && window.services.measurementService.getMeasurements().length >= {n_findings}",
                             120, f"{n_findings} SR measurements to be loaded")
            browser.click("[data-cy=trackedMeasurements-btn]")
            rows = browser.wait_for(
                f"(() => {{ const r = {_js_texts('[data-cy=data-row]')}; return r.length >= {n_findings} ? r : null; }})()",
                60, "the measurement panel rows")
            assert len(rows) == n_findings, rows
            assert sum("Lymph Node" in r for r in rows) == len(results.lymph_nodes), rows
            # Drawn: jumping to each measurement shows its annotation on the slice.
            drawn = 0
            for i in range(n_findings):
                browser.evaluate(f"document.querySelectorAll('[data-cy=data-row]')[{i}].click()")
                time.sleep(1.0)
                drawn += bool(browser.wait_for("document.querySelectorAll('[data-annotation-uid]').length", 20,
                                               f"the annotation of measurement {i + 1} on its slice"))
            shot(browser, "3-sr.png")
            assert drawn == n_findings
            # Each finding shows its long (L) and short (W) axis in the panel, as OHIF measured the lines drawn.
            panel = browser.evaluate("(document.querySelector('[data-cy=trackedMeasurements-panel]') || "
                                     "document.body).innerText")
            assert len(re.findall(r"L: [0-9.]+ mm", panel)) == n_findings, panel
            assert len(re.findall(r"W: [0-9.]+ mm", panel)) == n_findings, panel
            browser.drain(1.0)
            page = browser.evaluate("document.body.innerText")
            assert "Error Boundary" not in page and "Something went wrong" not in page
            assert browser.log.exceptions == [], browser.log.exceptions
            assert browser.log.errors() == [], browser.log.errors()
        finally:
            try:
                shot(browser, "last.png")
            except Exception:  # noqa: BLE001 - the screenshot is a help, not the verdict
                pass
