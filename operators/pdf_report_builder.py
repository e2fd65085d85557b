"""PDFReportBuilderOperator: the report for people, as PDF bytes and as a DICOM Encapsulated PDF.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    out ``pdf_document`` (:class:`lnmet.results.PdfDocument`: PDF bytes, the Encapsulated PDF
        dataset, the page count and the key images shown; None when disabled)

Pages (A4, reportlab; images by matplotlib):
    1. the summary a radiologist reads in seconds: the research-use notice, the quality gate's verdict
       (a framed "NOT ASSESSABLE" block with the failed checks, or one line), the verdict (patient-level
       decision, probability, threshold, findings in one line, method), which source gave the
       organs/vessels of the attention map (app.yaml ``organ_source``), one key image (the most
       probable metastatic node, else the tumour) and the most probable nodes (class, probability,
       short axis, volume, nearest organ/vessel, image number) with the node threshold;
    2. the other key images, two per page: the tumour, then each metastatic node by decreasing
       probability;
    3. the table of all lymph nodes sorted by probability (35 rows per page);
    4. the series used for each phase and why (in words), the models with their training, the run.
So the page count is ``1 + ceil(max(0, key images - 1) / 2) + max(1, ceil(nodes / 35)) + 1``
(:class:`PagePlan`). Every page has the patient's name and ID in its header (a radiologist must
know whose report it is; they never go to the logs) and the research-use notice in its footer.
Free text (header values, reasons, statements) enters the paragraphs through :func:`markup`.

The Encapsulated PDF instance is made with pydicom: the SDK's DICOMEncapsulatedPDFWriterOperator
writes its file itself (no atomic publishing) and highdicom has no PDF class. It has the patient
and study modules of the venous source, a new series (Modality DOC), and a Source Instance
Sequence listing the venous instances shown as key images.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import re
from datetime import datetime

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.datadict import dictionary_description, keyword_dict
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
    KeepInFrame,
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
from lnmet.reporting.pdf_text import markup
from lnmet.results import AnalysisResults, PdfDocument
from lnmet.types import LymphNodeFinding, TumourFinding

logger = logging.getLogger(__name__)

KEY_IMAGES_PER_PAGE = 2
NODE_ROWS_PER_PAGE = 35
FIRST_PAGE_NODE_ROWS = 12  # the most probable nodes on page 1; all of them in the node table
MARGINS_MM = (15.0, 17.0, 19.0)  # left/right, top, bottom (room for the header and the notice band)
FRAME_WIDTH_MM = 210.0 - 2 * MARGINS_MM[0]
FRAME_HEIGHT_MM = 297.0 - MARGINS_MM[1] - MARGINS_MM[2] - 5.0  # less reportlab's frame padding (2 x 6 pt)
FIRST_PAGE_IMAGE_WIDTH_MM = 180.0
KEY_IMAGE_ASPECT = 3.9 / 7.4  # height / width of a rendered key image
METHOD_TEXT = {
    "combined": "tumour + lymph-node model (Zheng et al., IJCV 2024: tumour CT patches with the volume of "
                "the largest metastatic node)",
    "tumour_only": "tumour-only model (no lymph node information)",
    "nodes_only": "lymph-node-only model (no tumour found)",
}
DOCUMENT_TITLE = "LN metastasis prediction report - research use only"


def expected_page_count(n_key_images: int, n_nodes: int) -> int:
    """Pages of the report for this many key images and lymph nodes (see the module docstring)."""
    return PagePlan.of(n_key_images, n_nodes).total


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
    """``FAMILY, Given``, with the ideographic form after it when the name has one (plain text:
    escape it with :func:`lnmet.reporting.pdf_text.markup`)."""
    if not pn:
        return "(no name)"
    family, given = getattr(pn, "family_name", ""), getattr(pn, "given_name", "")
    ideographic = " ".join(str(getattr(pn, "ideographic", "") or "").replace("^", " ").split())
    name = f"{family.upper()}, {given}".strip(", ") if family or given else ""
    if name and ideographic:
        return f"{name} ({ideographic})"
    return name or ideographic or str(pn)


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


QUALITY_CHECKS_SHOWN = 6  # failed checks listed on page 1; all of them are in results.json


def quality_gate_flowables(results: AnalysisResults, st: dict[str, ParagraphStyle]) -> list:
    """The quality gate's verdict, the first thing on page 1: a framed "NOT ASSESSABLE" block with
    the failed critical checks when the gate withheld the decision, else one line (nothing when no
    gate ran)."""
    report = results.quality
    if report is None:
        return []
    if report.assessable:
        text = f"Quality gate: assessed ({len(report.checks)} checks"
        text += (f"; warnings: {markup(', '.join(c.name for c in report.warnings), 300)})" if report.warnings else
                 ", none failed)")
        return [Paragraph(text, st["small"]), Spacer(1, 1 * mm)]
    colour = colors.HexColor("#8a4b00")
    rows = [[Paragraph("NOT ASSESSABLE \u2014 no lymph node metastasis prediction is given",
                       ParagraphStyle("na", parent=st["result"], textColor=colour))],
            [Paragraph("The scan, or what the models produced from it, is outside what the models were trained and "
                       "validated on. These critical checks failed:", st["body"])]]
    blocking = report.blocking
    for c in blocking[:QUALITY_CHECKS_SHOWN]:
        rows.append([Paragraph(f"<b>{markup(c.name, 60)}</b>: {markup(c.reason, 400)}", st["cell"])])
    more = len(blocking) - QUALITY_CHECKS_SHOWN
    rows.append([Paragraph(
        (f"... and {more} more. " if more > 0 else "") + "Every check, its value and accepted range: results.json "
        "(quality_gate). The segmentations and measurements below are shown for review only.", st["small"])])
    box = Table(rows, colWidths=[FRAME_WIDTH_MM * mm])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.5, colour), ("TOPPADDING", (0, 0), (-1, -1), 2),
                             ("BOTTOMPADDING", (0, 0), (-1, -1), 2), ("LEFTPADDING", (0, 0), (-1, -1), 6),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fff4e5"))]))
    return [box, Spacer(1, 2 * mm)]


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
        f"from the {markup(where)}: {markup(', '.join(names))}" for where, names in groups.items()) + "."
    if src.setting != "model":
        text += (f" Read: {markup(src.description)}. Where the site's segmentation and the model both label "
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
    # Header values are free text: escaped and shortened (lnmet.reporting.pdf_text) so that markup,
    # non-Latin names or overlong values neither break the layout nor the PDF builder.
    patient_line = (f"<b>{markup(_person(getattr(src, 'PatientName', None)), 70)}</b> &nbsp; ID "
                    f"{markup(getattr(src, 'PatientID', '') or '-', 40)}"
                    f" &nbsp; born {markup(_fmt_date(getattr(src, 'PatientBirthDate', '')), 12)}"
                    f" &nbsp; sex {markup(getattr(src, 'PatientSex', '') or '-', 4)}")
    study_line = (f"Study {markup(_fmt_date(getattr(src, 'StudyDate', '')), 12)} &nbsp; accession "
                  f"{markup(getattr(src, 'AccessionNumber', '') or '-', 20)}")

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

    nodes = sorted(results.lymph_nodes, key=lambda n: (-n.probability_positive, n.index))
    lead = lead_key_image(key_images)
    plan = PagePlan.of(len(key_images), len(nodes))
    story = _first_page(results, st, notice, lead, nodes, plan)
    story += _key_image_pages([ki for ki in key_images if ki is not lead], st)
    story += _node_table_pages(results, st, nodes)
    story += _details_page(results, st)

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=MARGINS_MM[0] * mm, rightMargin=MARGINS_MM[0] * mm,
                            topMargin=MARGINS_MM[1] * mm, bottomMargin=MARGINS_MM[2] * mm, title=DOCUMENT_TITLE,
                            author=results.run.app_name,
                            subject=notice, creator=f"{results.run.app_name} {results.run.app_version}")
    doc.build(story, canvasmaker=functools.partial(_NumberedCanvas, header=header_footer))
    data = buf.getvalue()
    return data, _count_pages(data)


def plain_selection_reason(reason: str) -> str:
    """Why a series was chosen, in words a reader knows (the phase selector's reason names the
    app.yaml rule with its regular expressions, and adds the slice count and time the table shows):
    ``rule series_selection.rules.arterial[0] {SeriesDescription: '(?i).*art.*'} matched; 40 slices,
    AcquisitionTime 10:00:00`` becomes ``series description matched the arterial rule (app.yaml
    series_selection, rule 1)``."""
    reason = re.sub(r";\s*\d+ slices, [^;()]*", "", reason)  # the table has slices and time
    m = re.match(r"\s*rule series_selection\.rules\.(\w+)\[(\d+)\]\s*\{(.*)\}\s*matched(.*)$", reason, re.S)
    if m:
        phase, index, body, rest = m.groups()
        keywords = re.findall(r"(?:^|,\s)([A-Z][A-Za-z0-9]+):\s", body)
        names = [(dictionary_description(k) if k in keyword_dict else k).lower() for k in keywords]
        what = " and ".join(names) or "the header"
        reason = (f"{what} matched the {phase} rule (app.yaml series_selection, rule {int(index) + 1})"
                  + rest.rstrip())
    reason = re.sub(r"\{[^{}]*\}", "", reason)  # any rule text left: never print raw patterns
    reason = reason.replace("timing fallback:", "no description rule matched; chosen by acquisition time:")
    return " ".join(reason.split())


def decision_text(results: AnalysisResults) -> tuple[str, colors.Color]:
    """The patient-level decision as the report words it, and its colour."""
    p = results.patient
    if results.status == "not_assessable":
        return "Not assessable: no patient-level prediction", colors.HexColor("#555555")
    if p.positive is None or p.probability is None:
        return "Undetermined: no patient-level prediction", colors.HexColor("#555555")
    edge = ", borderline" if p.borderline else ""
    if p.positive:
        return f"Lymph node metastasis PREDICTED (positive{edge})", colors.HexColor("#b00020")
    return f"No lymph node metastasis predicted (negative{edge})", colors.HexColor("#1b5e20")


def _node_threshold_text(results: AnalysisResults) -> str:
    value = "<b>unknown</b>" if results.ln_threshold is None else f"<b>{results.ln_threshold:.2f}</b>"
    return f"a node is called metastatic when its probability is \u2265 {value} (node threshold)"


def tumour_text(t: TumourFinding) -> str:
    """The tumour in the findings line, with how it was chosen when the PDAC model found more than
    one region (:mod:`lnmet.tumour`): a reader should know the others were set aside."""
    n = t.model_components
    if not t.found:
        if t.selection_rule == "none_near_pancreas":
            return f"no tumour kept ({n} region{'s' if n != 1 else ''} found, all away from the pancreas)"
        if t.selection_rule == "none_solid":
            return f"no tumour kept ({n} region{'s' if n != 1 else ''} found, none of soft-tissue density)"
        return "no tumour found"
    text = f"tumour (PDAC) {t.volume_mm3 / 1000:.1f} mL, maximum axial diameter {t.max_axial_diameter_mm:.0f} mm"
    chosen = {"pancreas_overlap": "the one in the pancreas", "near_pancreas": "the largest next to the pancreas",
              "largest_no_pancreas": "the largest"}.get(t.selection_rule or "")
    if chosen and n is not None and n > 1:
        text += f" ({chosen} of {n} regions found)"
    return text


def verdict_flowables(results: AnalysisResults, st: dict[str, ParagraphStyle]) -> list:
    """The verdict box at the top of page 1: the patient-level decision, its probability and
    threshold, the findings in one line, the method. (A status line about the input, such as "not
    assessable", goes directly above this box.)"""
    p = results.patient
    decision, colour = decision_text(results)
    prob = "n/a" if p.probability is None else f"{p.probability:.2f} ({100 * p.probability:.0f}%)"
    tumour = tumour_text(results.tumour)
    npos = len(results.positive_nodes)
    rows = [
        [Paragraph(decision, ParagraphStyle("res", parent=st["result"], textColor=colour))],
        [Paragraph(f"Probability of lymph node metastasis <b>{prob}</b>; decision threshold <b>{p.threshold:.2f}</b> "
                   "(positive when probability \u2265 threshold).", st["body"])],
        *([[Paragraph(f"<b>Held-out evidence:</b> {markup(results.patient_evidence, 600)}", st["body"])]]
          if results.patient_evidence else []),
        [Paragraph(f"Findings: {tumour}; {len(results.lymph_nodes)} lymph nodes segmented, <b>{npos} metastatic</b> "
                   f"(node threshold {'unknown' if results.ln_threshold is None else f'{results.ln_threshold:.2f}'})."
                   , st["body"])],
        [Paragraph(f"Method: {markup(METHOD_TEXT.get(p.method, p.method), 400)}. Volume of the largest metastatic node: "
                   f"{p.largest_positive_ln_volume_mm3:.0f} mm\u00b3." + (f" {markup(p.statement, 600)}" if p.statement else ""),
                   st["small"])],
    ]
    if results.run.single_phase:
        rows.append([Paragraph("<b>Single-phase analysis:</b> no arterial phase was available; the venous phase "
                               "alone was used (the models expect both phases; results are less reliable).",
                               st["body"])])
    box = Table(rows, colWidths=[FRAME_WIDTH_MM * mm])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colour), ("TOPPADDING", (0, 0), (-1, -1), 3),
                             ("BOTTOMPADDING", (0, 0), (-1, -1), 3), ("LEFTPADDING", (0, 0), (-1, -1), 6)]))
    return [box, Spacer(1, 2 * mm)]


def lead_key_image(key_images: list[KeyImage]) -> KeyImage | None:
    """The key image of page 1: the most probable metastatic node, else the tumour, else none."""
    return next((k for k in key_images if k.target.startswith("ln:")), key_images[0] if key_images else None)


@dataclasses.dataclass(frozen=True)
class PagePlan:
    """Where things are: page 1 the summary (verdict, the lead key image, the top nodes), then the
    other key images two per page, the node table (35 rows per page), and last the series and models."""

    key_image_pages: int
    node_table_pages: int

    @classmethod
    def of(cls, n_key_images: int, n_nodes: int) -> PagePlan:
        return cls(key_image_pages=math.ceil(max(0, n_key_images - 1) / KEY_IMAGES_PER_PAGE),
                   node_table_pages=max(1, math.ceil(n_nodes / NODE_ROWS_PER_PAGE)))

    @property
    def node_table_page(self) -> int:
        return 2 + self.key_image_pages

    @property
    def details_page(self) -> int:
        return self.node_table_page + self.node_table_pages

    @property
    def total(self) -> int:
        return self.details_page


def _structure_and_distance(n: LymphNodeFinding) -> str:
    if not n.nearest_structure:
        return "-"
    return f"{_structure_name(n.nearest_structure)}, {n.distance_mm:.1f} mm"


def _node_summary(results: AnalysisResults, st: dict[str, ParagraphStyle], nodes: list[LymphNodeFinding],
                  plan: PagePlan) -> list:
    """Page 1's node table: the most probable nodes with what decides (class, probability, short
    axis, volume) and where they are (nearest organ/vessel, image number)."""
    out = [Paragraph("Lymph nodes, most probable first", st["h2"]),
           Paragraph(_node_threshold_text(results).capitalize() + ".", st["body"]), Spacer(1, 1 * mm)]
    if not nodes:
        return out + [Paragraph("No lymph node was segmented.", st["body"])]
    shown = nodes[:FIRST_PAGE_NODE_ROWS]
    rows = [["#", "Class", "Probability", "Short axis\n(mm)", "Volume\n(mm\u00b3)",
             "Nearest organ/vessel, distance", "Image"]]
    for n in shown:
        rows.append([str(n.index), "metastatic" if n.positive else "non-metastatic", f"{n.probability_positive:.2f}",
                     f"{n.short_axis_mm:.1f}", f"{n.volume_mm3:.0f}", _structure_and_distance(n),
                     _image_number(results, n.centroid_mm)])
    table = _grid_table(rows, [10 * mm, 27 * mm, 20 * mm, 20 * mm, 20 * mm, 67 * mm, 16 * mm])
    style = [("ALIGN", (2, 1), (4, -1), "RIGHT"), ("ALIGN", (6, 1), (6, -1), "RIGHT")]
    for r, n in enumerate(shown, start=1):
        if n.positive:
            style += [("TEXTCOLOR", (1, r), (1, r), colors.HexColor("#b00020")),
                      ("FONT", (0, r), (-1, r), "Helvetica-Bold", 8)]
    table.setStyle(TableStyle(style))
    out.append(table)
    hidden = nodes[len(shown):]
    more = (f"{len(hidden)} more node(s) ({sum(n.positive for n in hidden)} metastatic) not shown here. "
            if hidden else "")
    out.append(Paragraph(
        f"{more}All nodes with long axis and mean HU: page {plan.node_table_page}. Image: instance number in venous "
        f"series {markup(results.venous.series.series_number or '-')} of the slice through the node's centre. "
        f"Phases and series chosen, models: page {plan.details_page}.", st["small"]))
    return out


def _key_image_flowables(ki: KeyImage, st: dict[str, ParagraphStyle], width_mm: float) -> list:
    return [Image(io.BytesIO(ki.png), width=width_mm * mm, height=width_mm * mm * KEY_IMAGE_ASPECT),
            Paragraph(f"{markup(ki.title)}. Axial venous slice through the largest cross-section; left: whole slice "
                      "(dashed box = zoomed region), right: zoom with node numbers; legend: each structure on the "
                      "slice in its overlay colour.", st["caption"])]


def _first_page(results: AnalysisResults, st: dict[str, ParagraphStyle], notice: str, lead: KeyImage | None,
                nodes: list[LymphNodeFinding], plan: PagePlan) -> list:
    """Page 1, read in seconds: the quality gate's verdict, the research-use notice, the verdict, one key
    image, the top nodes.
    Shrunk to fit one page if it must (a long status or statement never pushes it onto two)."""
    banner = Table([[Paragraph(notice.upper(), st["notice"])]], colWidths=[FRAME_WIDTH_MM * mm])
    banner.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#b00020")),
                                ("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, 0), (-1, -1), 4)]))
    # The quality gate's verdict about the input is the first thing on the page (issue 15), then the decision.
    page = quality_gate_flowables(results, st)
    page += [Paragraph("Lymph node metastasis prediction \u2014 pancreatic cancer (CT)", st["title"]),
             banner, Spacer(1, 3 * mm)]
    page += verdict_flowables(results, st)
    page += organ_source_paragraph(results, st["small"])
    if lead is not None:
        page += _key_image_flowables(lead, st, FIRST_PAGE_IMAGE_WIDTH_MM)
        if plan.key_image_pages:
            pages = "page 2" if plan.key_image_pages == 1 else f"pages 2\u2013{1 + plan.key_image_pages}"
            page.append(Paragraph(f"Other key images: {pages}.", st["small"]))
    else:
        page.append(Paragraph("No key image: no tumour was found and no node was classified metastatic.",
                              st["body"]))
    page += _node_summary(results, st, nodes, plan)
    return [KeepInFrame(FRAME_WIDTH_MM * mm, FRAME_HEIGHT_MM * mm, page, mode="shrink"), PageBreak()]


def _key_image_pages(key_images: list[KeyImage], st: dict[str, ParagraphStyle]) -> list:
    story = []
    for i in range(0, len(key_images), KEY_IMAGES_PER_PAGE):
        story.append(Paragraph("Key images", st["h2"]))
        for ki in key_images[i:i + KEY_IMAGES_PER_PAGE]:
            story += _key_image_flowables(ki, st, FRAME_WIDTH_MM)
            story.append(Spacer(1, 4 * mm))
        story.append(PageBreak())
    return story


def _node_table_pages(results: AnalysisResults, st: dict[str, ParagraphStyle],
                      nodes: list[LymphNodeFinding]) -> list:
    story = []
    chunks = [nodes[i:i + NODE_ROWS_PER_PAGE] for i in range(0, len(nodes), NODE_ROWS_PER_PAGE)] or [[]]
    for c, chunk in enumerate(chunks):
        story.append(Paragraph("Lymph nodes, by decreasing probability of metastasis"
                               + (f" (continued, {c + 1}/{len(chunks)})" if c else ""), st["h2"]))
        if results.ln_threshold is not None:
            story.append(Paragraph(f"Class: metastatic when the probability is \u2265 {results.ln_threshold:.2f} "
                                   "(node threshold).", st["small"]))
        if not nodes:
            story.append(Paragraph("No lymph node was segmented.", st["body"]))
            story.append(PageBreak())
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
                f"number, in venous series {markup(results.venous.series.series_number or '-')}, of the slice "
                "through the node's centre.", st["small"]))
        story.append(PageBreak())
    return story


def _details_page(results: AnalysisResults, st: dict[str, ParagraphStyle]) -> list:
    """The last page: the series used for each phase and why, the models with their training, the run."""
    story = [Paragraph("Series used", st["h2"])]
    rows = [["Phase", "Series description", "No.", "Acquired", "Slices", "Why chosen"]]
    for ref in (results.arterial, results.venous.series):
        if ref is None:
            continue
        rows.append([ref.phase, Paragraph(markup(ref.series_description or "-", 160), st["cell"]),
                     "-" if ref.series_number is None else str(ref.series_number), _fmt_time(ref.acquisition_time),
                     str(ref.num_slices),
                     Paragraph(markup(plain_selection_reason(ref.reason), 500), st["cell"])])
    story.append(_grid_table(rows, [18 * mm, 45 * mm, 10 * mm, 24 * mm, 13 * mm, 70 * mm], zebra=False))
    completed = [f"{ref.phase}: " + ", ".join(
        markup(d["attribute"], 40) + (f" {markup(d['value'], 70)}" if d["value"] else " (per image)")
        for d in ref.derived_attributes if d["value"] != "")
        for ref in (results.arterial, results.venous.series) if ref is not None and ref.derived_attributes]
    if completed:  # identifiers the files lacked: the outputs reference the values the app completed
        story.append(Spacer(1, 1.5 * mm))
        story.append(Paragraph(
            "<b>Identifiers completed by the application</b> (empty or missing in the files; the SEG, SR and this "
            "report reference these values; how each was derived: results.json, derived_attributes): "
            + "; ".join(completed) + ".", st["small"]))
    if results.run.single_phase:
        story.append(Spacer(1, 1.5 * mm))
        story.append(Paragraph("<b>Single-phase analysis:</b> no arterial phase was available; the venous phase "
                               "alone was used (the models expect both phases; results are less reliable).",
                               st["body"]))

    story.append(Paragraph("Models", st["h2"]))
    rows = [["Model", "Version", "Trained on", "Synthetic data", "SHA-256 (first 12)"]]
    for m in results.models:
        rows.append([Paragraph(markup(m.name, 30), st["cell"]), Paragraph(markup(m.version, 20), st["cell"]),
                     Paragraph(markup(m.trained_on, 1000), st["cell"]),
                     "yes" if m.metadata.get("synthetic_training_data") else "no", m.sha256[:12]])
    story.append(_grid_table(rows, [34 * mm, 24 * mm, 64 * mm, 22 * mm, 36 * mm]))
    story.append(Spacer(1, 1.5 * mm))
    for m in results.models:  # what each model reached on unseen generated studies (lnmet.held_out)
        text = m.held_out.summary() if m.held_out is not None else "no held-out figures recorded"
        story.append(Paragraph(f"<b>{markup(m.name, 30)}</b> held-out: {markup(text, 700)}.", st["small"]))
    story.append(Spacer(1, 2 * mm))
    run = results.run
    run_text = f"Run: {markup(run.app_name)} {markup(run.app_version)} on {markup(run.device)}"
    if run.timings_s:
        run_text += f", total {sum(run.timings_s.values()):.0f} s"
    story.append(Paragraph(run_text + ".", st["small"]))
    for w in run.warnings[:4]:
        story.append(Paragraph(f"Warning: {markup(w, 400)}", st["small"]))
    if len(run.warnings) > 4:
        story.append(Paragraph(f"... {len(run.warnings) - 4} more warnings in results.json", st["small"]))
    story.append(Paragraph(
        "This report was produced automatically by a research application. It has not been reviewed by a "
        "physician and must not be used for diagnosis or treatment decisions.", st["small"]))
    return story


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
