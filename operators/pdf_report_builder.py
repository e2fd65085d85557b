"""PDFReportBuilderOperator: the report for people, as PDF bytes and as a DICOM Encapsulated PDF.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    out ``pdf_document`` (:class:`lnmet.results.PdfDocument`: PDF bytes, the Encapsulated PDF
        dataset, the page count and the key images shown; None when disabled)

Pages (A4, reportlab; images by matplotlib):
    1. the patient-level result first (decision, probability, threshold, method), then the findings
       in brief, the series used for each phase (acquisition times, why chosen), the models, and
       which source gave the organs/vessels of the attention map (app.yaml ``organ_source``);
    2. key images, two per page: the tumour, then each metastatic node by decreasing probability;
    3. the table of all lymph nodes sorted by probability (35 rows per page).
So the page count is ``1 + ceil(key images / 2) + max(1, ceil(nodes / 35))``. Every page has the
patient's name and ID in its header (a radiologist must know whose report it is; they never go to
the logs) and the research-use notice in its footer.

The Encapsulated PDF instance is made with pydicom: the SDK's DICOMEncapsulatedPDFWriterOperator
writes its file itself (no atomic publishing) and highdicom has no PDF class. It has the patient
and study modules of the venous source, a new series (Modality DOC), and a Source Instance
Sequence listing the venous instances shown as key images.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import re
from datetime import datetime
from xml.sax.saxutils import escape as xml_escape

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    Image,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from lnmet.labels import ORGAN_BY_KEY
from lnmet.organ_sources import class_source_lines
from lnmet.reporting import RESEARCH_NOTICE, SYNTHETIC_NOTICE, dicom_common
from lnmet.reporting.keyimages import KeyImage, render_key_images
from lnmet.results import AnalysisResults, PdfDocument

logger = logging.getLogger(__name__)

KEY_IMAGES_PER_PAGE = 2
NODE_ROWS_PER_PAGE = 35
METHOD_TEXT = {
    "combined": "tumour + lymph-node model (Zheng et al., IJCV 2024: tumour CT patches with the volume of "
                "the largest metastatic node)",
    "tumour_only": "tumour-only model (no lymph node information)",
    "nodes_only": "lymph-node-only model (no tumour found)",
}
DOCUMENT_TITLE = "LN metastasis prediction report - research use only"


def expected_page_count(n_key_images: int, n_nodes: int) -> int:
    """Pages of the report for this many key images and lymph nodes (see the module docstring)."""
    return 1 + math.ceil(n_key_images / KEY_IMAGES_PER_PAGE) + max(1, math.ceil(n_nodes / NODE_ROWS_PER_PAGE))


def notice_text(synthetic: bool) -> str:
    """The notice on every page (em dashes: the PDF fonts have them)."""
    text = RESEARCH_NOTICE.replace(" - ", " \u2014 ")
    return f"{text} \u2014 {SYNTHETIC_NOTICE}" if synthetic else text


def _fmt_time(tm: str | None) -> str:
    if not tm:
        return "unknown"
    digits = tm.split(".")[0]
    if len(digits) >= 6 and digits.isdigit():
        return f"{digits[0:2]}:{digits[2:4]}:{digits[4:6]}"
    return tm


def _fmt_date(da: str | None) -> str:
    if da and len(da) == 8 and da.isdigit():
        return f"{da[0:4]}-{da[4:6]}-{da[6:8]}"
    return da or "unknown"


def _person(pn) -> str:
    if not pn:
        return "(no name)"
    family, given = getattr(pn, "family_name", ""), getattr(pn, "given_name", "")
    return f"{family.upper()}, {given}".strip(", ") if family or given else str(pn)


def _image_number(results: AnalysisResults, point_mm) -> str:
    """Instance number of the venous slice through a physical point (what a reader scrolls to)."""
    ref = results.reference
    k = int(round(ref.TransformPhysicalPointToContinuousIndex([float(v) for v in point_mm])[2]))
    if not 0 <= k < ref.GetSize()[2]:
        return "-"
    return str(getattr(results.source_headers()[k], "InstanceNumber", k + 1))


def _structure_name(key: str) -> str:
    cls = ORGAN_BY_KEY.get(key)
    return cls.name if cls else (key or "none segmented")


class _NumberedCanvas(rl_canvas.Canvas):
    """Canvas that knows the page count when drawing headers/footers ("page i of n")."""

    def __init__(self, *args, header=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._saved: list[dict] = []
        self._header = header

    def showPage(self):  # noqa: N802 - reportlab API
        self._saved.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._saved)
        for state in self._saved:
            self.__dict__.update(state)
            self._header(self, self._pageNumber, total)
            super().showPage()
        super().save()


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=16, spaceAfter=4),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontSize=12, spaceBefore=8, spaceAfter=4),
        "body": ParagraphStyle("body", parent=base["BodyText"], fontSize=9, leading=11.5),
        "small": ParagraphStyle("small", parent=base["BodyText"], fontSize=7.5, leading=9),
        "cell": ParagraphStyle("cell", parent=base["BodyText"], fontSize=8, leading=9.5),
        "notice": ParagraphStyle("notice", parent=base["BodyText"], fontSize=10, leading=13,
                                 textColor=colors.white, alignment=TA_CENTER, fontName="Helvetica-Bold"),
        "result": ParagraphStyle("result", parent=base["BodyText"], fontSize=14, leading=18,
                                 fontName="Helvetica-Bold", alignment=TA_CENTER),
        "caption": ParagraphStyle("caption", parent=base["BodyText"], fontSize=8.5, leading=10.5),
    }


def _grid_table(rows, widths, header_rows: int = 1, zebra: bool = True) -> Table:
    t = Table(rows, colWidths=widths, repeatRows=header_rows)
    cmds = [("FONT", (0, 0), (-1, header_rows - 1), "Helvetica-Bold", 8),
            ("FONT", (0, header_rows), (-1, -1), "Helvetica", 8),
            ("BACKGROUND", (0, 0), (-1, header_rows - 1), colors.HexColor("#dfe6ee")),
            ("GRID", (0, 0), (-1, -1), 0.3, colors.HexColor("#9aa5b1")),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    if zebra:
        for r in range(header_rows, len(rows)):
            if (r - header_rows) % 2:
                cmds.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#f4f6f8")))
    t.setStyle(TableStyle(cmds))
    return t


def organ_source_paragraph(results: AnalysisResults, style: ParagraphStyle) -> list[Paragraph]:
    """Page 1: which source gave the organ/vessel classes of the attention map (app.yaml
    ``organ_source``), grouped by source; nothing when not recorded."""
    src = results.organ_sources
    if src is None:
        return []
    groups: dict[str, list[str]] = {}
    for name, where, _ in class_source_lines(src):
        groups.setdefault(where, []).append(name)
    text = "<b>Organs/vessels of the attention map</b> \u2014 " + "; ".join(
        f"from the {xml_escape(where)}: {xml_escape(', '.join(names))}" for where, names in groups.items()) + "."
    if src.setting != "model":
        text += (f" Read: {xml_escape(src.description)}. Where the site's segmentation and the model both label "
                 "a voxel, the site's label is kept.")
    return [Paragraph(text, style)]


def build_pdf_bytes(results: AnalysisResults, key_images: list[KeyImage]) -> tuple[bytes, int]:
    """Lay out the report; returns the PDF bytes and the number of pages."""
    st = _styles()
    headers = results.source_headers()
    src = headers[0]
    synthetic = results.synthetic_training_data
    notice = notice_text(synthetic)
    created = datetime.now().strftime("%Y-%m-%d %H:%M")
    patient_line = (f"<b>{_person(getattr(src, 'PatientName', None))}</b> &nbsp; ID {getattr(src, 'PatientID', '') or '-'}"
                    f" &nbsp; born {_fmt_date(getattr(src, 'PatientBirthDate', ''))}"
                    f" &nbsp; sex {getattr(src, 'PatientSex', '') or '-'}")
    study_line = (f"Study {_fmt_date(getattr(src, 'StudyDate', ''))} &nbsp; accession "
                  f"{getattr(src, 'AccessionNumber', '') or '-'}")

    def header_footer(canv: rl_canvas.Canvas, page: int, total: int) -> None:
        w, h = A4
        canv.saveState()
        canv.setFont("Helvetica", 8)
        canv.setFillColor(colors.black)
        ph = Paragraph(patient_line + " &nbsp;&nbsp; " + study_line, st["small"])
        ph.wrapOn(canv, w - 30 * mm, 10 * mm)
        ph.drawOn(canv, 15 * mm, h - 12 * mm)
        canv.setStrokeColor(colors.HexColor("#9aa5b1"))
        canv.line(15 * mm, h - 13.5 * mm, w - 15 * mm, h - 13.5 * mm)
        canv.setFillColor(colors.HexColor("#b00020"))
        canv.rect(15 * mm, 8 * mm, w - 30 * mm, 7 * mm, stroke=0, fill=1)
        canv.setFillColor(colors.white)
        canv.setFont("Helvetica-Bold", 8.5)
        canv.drawCentredString(w / 2, 10.5 * mm, notice)
        canv.setFillColor(colors.black)
        canv.setFont("Helvetica", 7.5)
        canv.drawString(15 * mm, 4 * mm, f"{results.run.app_name} {results.run.app_version} \u2014 report created {created}")
        canv.drawRightString(w - 15 * mm, 4 * mm, f"Page {page} of {total}")
        canv.restoreState()

    story = []
    # ------------------------------------------------------------------ page 1: result first
    story.append(Paragraph("Lymph node metastasis prediction \u2014 pancreatic cancer (CT)", st["title"]))
    banner = Table([[Paragraph(notice.upper(), st["notice"])]], colWidths=[180 * mm])
    banner.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#b00020")),
                                ("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 5)]))
    story += [banner, Spacer(1, 4 * mm)]
    p = results.patient
    if p.positive is None or p.probability is None:
        decision, colour = "Undetermined: no patient-level prediction", colors.HexColor("#555555")
    elif p.positive:
        decision, colour = "Lymph node metastasis PREDICTED (positive)", colors.HexColor("#b00020")
    else:
        decision, colour = "No lymph node metastasis predicted (negative)", colors.HexColor("#1b5e20")
    result_style = ParagraphStyle("res", parent=st["result"], textColor=colour)
    prob = "n/a" if p.probability is None else f"{p.probability:.2f} ({100 * p.probability:.0f}%)"
    result_rows = [
        [Paragraph(decision, result_style)],
        [Paragraph(f"Probability of lymph node metastasis: <b>{prob}</b> &nbsp;&nbsp; decision threshold: "
                   f"<b>{p.threshold:.2f}</b> (positive when probability \u2265 threshold)", st["body"])],
        [Paragraph("Lymph nodes: a node is called metastatic when its probability is \u2265 "
                   + ("<b>unknown</b>" if results.ln_threshold is None else f"<b>{results.ln_threshold:.2f}</b>")
                   + " (node threshold; the patient threshold above applies to the patient).", st["body"])],
        [Paragraph(f"Method: {METHOD_TEXT.get(p.method, p.method)}. Volume of the largest metastatic node: "
                   f"{p.largest_positive_ln_volume_mm3:.0f} mm\u00b3."
                   + (f" {p.statement}" if p.statement else ""), st["body"])],
    ]
    rt = Table(result_rows, colWidths=[180 * mm])
    rt.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colour), ("TOPPADDING", (0, 0), (-1, -1), 4),
                            ("BOTTOMPADDING", (0, 0), (-1, -1), 4), ("LEFTPADDING", (0, 0), (-1, -1), 6)]))
    story += [rt, Spacer(1, 2 * mm)]

    story.append(Paragraph("Findings", st["h2"]))
    t = results.tumour
    tumour_text = (f"Tumour (PDAC) segmented: volume {t.volume_mm3:.0f} mm\u00b3 ({t.volume_mm3 / 1000:.1f} mL), "
                   f"maximum axial diameter {t.max_axial_diameter_mm:.1f} mm"
                   + (f", mean {t.mean_hu_venous:.0f} HU (venous)" if t.mean_hu_venous is not None else "") + "."
                   if t.found else f"No tumour found. {t.statement}")
    npos, nneg = len(results.positive_nodes), len(results.negative_nodes)
    story.append(Paragraph(tumour_text, st["body"]))
    story.append(Paragraph(
        f"Lymph nodes: {len(results.lymph_nodes)} segmented, <b>{npos} classified metastatic</b>, {nneg} "
        "non-metastatic (table on the last page(s); key images through the tumour and each metastatic node).",
        st["body"]))

    story.append(Paragraph("Series used", st["h2"]))
    rows = [["Phase", "Series description", "No.", "Acquired", "Slices", "Why chosen"]]
    for ref in (results.arterial, results.venous.series):
        if ref is None:
            continue
        rows.append([ref.phase, Paragraph(ref.series_description or "-", st["cell"]), str(ref.series_number or "-"),
                     _fmt_time(ref.acquisition_time), str(ref.num_slices), Paragraph(ref.reason, st["cell"])])
    story.append(_grid_table(rows, [18 * mm, 45 * mm, 10 * mm, 24 * mm, 13 * mm, 70 * mm], zebra=False))
    if results.run.single_phase:
        story.append(Spacer(1, 1.5 * mm))
        story.append(Paragraph("<b>Single-phase analysis:</b> no arterial phase was available; the venous phase "
                               "alone was used (the models expect both phases; results are less reliable).",
                               st["body"]))

    story.append(Paragraph("Models", st["h2"]))
    rows = [["Model", "Version", "Trained on", "Synthetic data", "SHA-256 (first 12)"]]
    for m in results.models:
        rows.append([m.name, m.version, Paragraph(m.trained_on, st["cell"]),
                     "yes" if m.metadata.get("synthetic_training_data") else "no", m.sha256[:12]])
    story.append(_grid_table(rows, [34 * mm, 24 * mm, 64 * mm, 22 * mm, 36 * mm]))
    story.append(Spacer(1, 2 * mm))
    run = results.run
    run_text = f"Run: {run.app_name} {run.app_version} on {run.device}"
    if run.timings_s:
        run_text += f", total {sum(run.timings_s.values()):.0f} s"
    story.append(Paragraph(run_text + ".", st["small"]))
    story += organ_source_paragraph(results, st["small"])
    for w in run.warnings[:4]:
        story.append(Paragraph(f"Warning: {w}", st["small"]))
    if len(run.warnings) > 4:
        story.append(Paragraph(f"... {len(run.warnings) - 4} more warnings in results.json", st["small"]))
    story.append(Paragraph(
        "This report was produced automatically by a research application. It has not been reviewed by a "
        "physician and must not be used for diagnosis or treatment decisions.", st["small"]))

    # ------------------------------------------------------------------ key images
    for i in range(0, len(key_images), KEY_IMAGES_PER_PAGE):
        story.append(PageBreak())
        story.append(Paragraph("Key images", st["h2"]))
        for ki in key_images[i:i + KEY_IMAGES_PER_PAGE]:
            story.append(Image(io.BytesIO(ki.png), width=180 * mm, height=180 * mm * 3.9 / 7.4))
            story.append(Paragraph(
                f"{ki.title}. Slice through the largest cross-section; left: whole axial slice (box = zoomed "
                "region), right: zoom with node numbers.", st["caption"]))
            story.append(Spacer(1, 4 * mm))

    # ------------------------------------------------------------------ node table
    nodes = sorted(results.lymph_nodes, key=lambda n: (-n.probability_positive, n.index))
    chunks = [nodes[i:i + NODE_ROWS_PER_PAGE] for i in range(0, len(nodes), NODE_ROWS_PER_PAGE)] or [[]]
    for c, chunk in enumerate(chunks):
        story.append(PageBreak())
        story.append(Paragraph("Lymph nodes, by decreasing probability of metastasis"
                               + (f" (continued, {c + 1}/{len(chunks)})" if c else ""), st["h2"]))
        if results.ln_threshold is not None:
            story.append(Paragraph(f"Class: metastatic when the probability is \u2265 {results.ln_threshold:.2f} "
                                   "(node threshold).", st["small"]))
        if not nodes:
            story.append(Paragraph("No lymph node was segmented.", st["body"]))
            break
        rows = [["#", "Class", "Prob.", "Volume\n(mm\u00b3)", "Short axis\n(mm)", "Long axis\n(mm)",
                 "Mean HU\n(venous)", "Nearest organ/vessel", "Distance\n(mm)", "Image"]]
        for n in chunk:
            rows.append([str(n.index), "metastatic" if n.positive else "non-metastatic",
                         f"{n.probability_positive:.2f}", f"{n.volume_mm3:.0f}", f"{n.short_axis_mm:.1f}",
                         f"{n.long_axis_mm:.1f}", f"{n.mean_hu_venous:.0f}", _structure_name(n.nearest_structure),
                         f"{n.distance_mm:.1f}" if n.nearest_structure else "-",
                         _image_number(results, n.centroid_mm)])
        table = _grid_table(rows, [8 * mm, 23 * mm, 12 * mm, 16 * mm, 17 * mm, 17 * mm, 17 * mm, 43 * mm, 15 * mm,
                                   12 * mm])
        extra = [("TEXTCOLOR", (1, r + 1), (1, r + 1), colors.HexColor("#b00020"))
                 for r, n in enumerate(chunk) if n.positive]
        extra += [("ALIGN", (2, 1), (6, -1), "RIGHT"), ("ALIGN", (8, 1), (9, -1), "RIGHT")]
        table.setStyle(TableStyle(extra))
        story.append(table)
        if c == len(chunks) - 1:
            story.append(Spacer(1, 2 * mm))
            story.append(Paragraph(
                "Short and long axis: in the axial slice of largest cross-section. Distance: from the node's "
                "boundary to the nearest of the 10 organs/vessels of the attention map (0 = touching). "
                "Probability: the node classifier's probability that the node is metastatic. Image: instance "
                f"number, in venous series {results.venous.series.series_number}, of the slice through the "
                "node's centre.", st["small"]))

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=17 * mm,
                            bottomMargin=19 * mm, title=DOCUMENT_TITLE, author=results.run.app_name,
                            subject=notice, creator=f"{results.run.app_name} {results.run.app_version}")
    doc.build(story, canvasmaker=functools.partial(_NumberedCanvas, header=header_footer))
    data = buf.getvalue()
    return data, _count_pages(data)


def _count_pages(pdf: bytes) -> int:
    """Number of page objects in a PDF written by reportlab (``/Type /Page`` not followed by 's')."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))


def build_encapsulated_pdf(results: AnalysisResults, pdf_bytes: bytes, key_images: list[KeyImage]) -> Dataset:
    """The DICOM Encapsulated PDF instance of the report, in the venous series' study."""
    headers = results.source_headers()
    src = headers[0]
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = getattr(src, "SpecificCharacterSet", "ISO_IR 100") or "ISO_IR 100"
    date, time = dicom_common.now_dicom()
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    dicom_common.copy_patient_and_study(src, ds)
    # Encapsulated Document Series
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = dicom_common.PDF_SERIES_NUMBER
    ds.SeriesDescription = dicom_common.series_description("report", results.synthetic_training_data)
    ds.SeriesDate, ds.SeriesTime = date, time
    # General Equipment + SC Equipment
    ds.Manufacturer = dicom_common.MANUFACTURER
    ds.ManufacturerModelName = results.run.app_name[:64]
    ds.SoftwareVersions = dicom_common.software_versions(results)
    ds.ConversionType = "WSD"
    # Encapsulated Document
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "YES"  # the pages show the patient's name and ID
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = DOCUMENT_TITLE
    code = Dataset()
    report_code = dcm_codes.LN.DiagnosticImagingReport  # 18748-4
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        report_code.value, report_code.scheme_designator, report_code.meaning)
    ds.ConceptNameCodeSequence = [code]
    ds.VerificationFlag = "UNVERIFIED"
    sources = []
    for uid in dict.fromkeys(ki.sop_instance_uid for ki in key_images):
        item = Dataset()
        item.ReferencedSOPClassUID = results.venous.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        sources.append(item)
    if sources:
        ds.SourceInstanceSequence = sources
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    ds.EncapsulatedDocument = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    return ds


def build_pdf(results: AnalysisResults) -> PdfDocument:
    """Render the key images, lay out the PDF and wrap it as DICOM (pure function)."""
    results.validate()
    dicom_common.check_source_geometry(results)
    key_images = render_key_images(results)
    pdf_bytes, pages = build_pdf_bytes(results, key_images)
    expected = expected_page_count(len(key_images), len(results.lymph_nodes))
    if pages != expected:
        logger.warning("PDF report has %d pages, layout planned %d (a page overflowed)", pages, expected)
    ds = build_encapsulated_pdf(results, pdf_bytes, key_images)
    logger.info("PDF report built: %d pages, %d key images, %d bytes", pages, len(key_images), len(pdf_bytes))
    return PdfDocument(pdf_bytes=pdf_bytes, dataset=ds, page_count=pages,
                       key_images=[{"target": k.target, "title": k.title, "slice_index": k.slice_index,
                                    "sop_instance_uid": k.sop_instance_uid} for k in key_images])


class PDFReportBuilderOperator(Operator):
    """Builds the PDF report and its Encapsulated PDF instance (see the module docstring)."""

    def __init__(self, fragment: Fragment, *args, enabled: bool = True, **kwargs) -> None:
        self.enabled = enabled
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("analysis_results")
        spec.output("pdf_document")

    def compute(self, op_input, op_output, context) -> None:
        results: AnalysisResults = op_input.receive("analysis_results")
        op_output.emit(build_pdf(results) if self.enabled else None, "pdf_document")
