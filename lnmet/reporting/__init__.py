"""Shared pieces of the four output builders: layout, notices, coded concepts, DICOM helpers,
key-image rendering and a ground-truth stand-in for demos and tests.

Output layout (relative to the application's output folder; see docs/OUTPUTS.md)::

    SEG/seg.dcm        DICOM Segmentation (organs/vessels, PDAC, positive and negative LNs)
    SR/sr.dcm          DICOM Comprehensive 3D SR, TID 1500 measurement report
    PDF/report.pdf     the report for people
    PDF/report.dcm     the same PDF as DICOM Encapsulated PDF
    results.json       everything in machine-readable form (lnmet/schemas/results.schema.json)
"""

from __future__ import annotations

# Paths of the outputs relative to the output folder (the publisher writes exactly these).
SEG_PATH = "SEG/seg.dcm"
SR_PATH = "SR/sr.dcm"
PDF_PATH = "PDF/report.pdf"
PDF_DICOM_PATH = "PDF/report.dcm"
RESULTS_JSON_PATH = "results.json"

# The notice every output carries.
RESEARCH_NOTICE = "Research use only - not for clinical decisions"
SYNTHETIC_NOTICE = "models trained on synthetic data"


def research_notice(synthetic: bool) -> str:
    """The research-use notice, with the synthetic-training statement when it applies."""
    return f"{RESEARCH_NOTICE} - {SYNTHETIC_NOTICE}" if synthetic else RESEARCH_NOTICE
