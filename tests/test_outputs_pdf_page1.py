"""PDF report page 1 as a reader sees it, checked on the page rendered by poppler's pdftoppm:
the verdict before the key image and the node table, the series/models detail on a later page with
the phase-selection reason in words, and the legend of the key image in the overlays' colours
(a grey legend under coloured overlays fails)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from lnmet.dicom_io import scan_folder
from lnmet.labels import ORGAN_CLASSES
from lnmet.measurements import measure_lymph_nodes
from lnmet.reporting import keyimages, style
from lnmet.reporting.standin import results_from_study
from operators.pdf_report_builder import (
    FIRST_PAGE_NODE_ROWS,
    NODE_ROWS_PER_PAGE,
    PagePlan,
    build_pdf,
    lead_key_image,
    plain_selection_reason,
)
from operators.phase_selector import select_phases

RENDER_DPI = 150
MIN_CHROMA = 2.0  # plain CT is grey (chroma 0); anything coloured is an overlay
ALPHA_RANGE = (0.1, 1.05)  # overlay opacities: fills 0.22/0.35, darker under number boxes, contours 1
MIN_EXPLAINED = 0.9  # of the coloured pixels of the panels, at least this share has a swatch's colour
MIN_PIXELS_PER_SWATCH = 20


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (poppler-utils) is not installed")
    return path


def render_page(pdf_bytes: bytes, page: int, workdir: Path) -> np.ndarray:
    """One page of the PDF as an RGB array, rendered by pdftoppm."""
    pdf = workdir / "report.pdf"
    pdf.write_bytes(pdf_bytes)
    subprocess.run([_tool("pdftoppm"), "-r", str(RENDER_DPI), "-png", "-singlefile", "-f", str(page), "-l",
                    str(page), str(pdf), str(workdir / f"page{page}")], check=True)
    return np.asarray(Image.open(workdir / f"page{page}.png").convert("RGB")).astype(np.float64)


def key_image_box(page: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of the key image on a rendered page: its black background is
    the largest dark region of the page."""
    labels, n = ndimage.label(page.max(axis=2) < 16)
    assert n, "no dark region: the page has no key image"
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, index=np.arange(1, n + 1))
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def legend_swatches(band: np.ndarray) -> list[np.ndarray]:
    """Colours of the legend's swatches in reading order (matplotlib fills the legend's columns
    first): solid, wide, uniform rectangles in the legend band (the labels' glyphs are thin or not
    uniform, the background is black)."""
    labels, n = ndimage.label(band.max(axis=2) > 40)
    found = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        mask = labels[sl] == i
        if h < 4 or w < 1.5 * h or mask.mean() < 0.9:
            continue
        inner = ndimage.binary_erosion(mask)
        pixels = band[sl][inner if inner.any() else mask]
        colour = np.median(pixels, axis=0)
        if np.mean(np.abs(pixels - colour).max(axis=1) <= 10) >= 0.9:
            found.append((sl[1].start // 4, sl[0].start, colour))  # columns align to the pixel
    return [colour for _, _, colour in sorted(found, key=lambda f: f[:2])]


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb - rgb.mean(axis=-1, keepdims=True)


def overlay_colour_check(panels: np.ndarray, swatches: list[np.ndarray]) -> tuple[float, list[int]]:
    """How well the swatches' colours explain the overlays: (share of coloured panel pixels whose
    colour is a swatch colour blended over grey CT, pixels explained per swatch).

    A swatch colour ``c`` drawn with opacity ``a`` over grey ``g`` gives ``(1 - a) g + a c``, whose
    chroma (pixel minus its channel mean) is ``a`` times that of ``c``: a coloured pixel is explained
    by ``c`` when its chroma is ``c``'s scaled by an opacity in ALPHA_RANGE (a few units of rounding)."""
    px = _chroma(panels.reshape(-1, 3))
    px = px[np.linalg.norm(px, axis=1) >= MIN_CHROMA]
    explained = np.zeros(len(px), bool)
    per_swatch = []
    for colour in swatches:
        c = _chroma(colour)
        norm2 = float(c @ c)
        if norm2 < 1.0:  # a grey swatch explains no coloured pixel
            per_swatch.append(0)
            continue
        a = px @ c / norm2
        residual = np.linalg.norm(px - a[:, None] * c, axis=1)
        ok = (a >= ALPHA_RANGE[0]) & (a <= ALPHA_RANGE[1]) & (residual <= 2.0 + 0.08 * np.linalg.norm(px, axis=1))
        explained |= ok
        per_swatch.append(int(ok.sum()))
    share = float(explained.mean()) if len(px) else 0.0
    return share, per_swatch


def page_legend_and_overlays(page: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The legend swatches and the panels (images with overlays) of the key image on a rendered page."""
    y0, y1, x0, x1 = key_image_box(page)
    h = y1 - y0
    inset = max(2, h // 100)
    top = y0 + int(round((1 - keyimages.PANELS_TOP) * h)) + inset
    bottom = y0 + int(round((1 - keyimages.PANELS_BOTTOM) * h))
    panels = page[top:bottom - inset, x0 + inset:x1 - inset]
    band = page[bottom + inset:y1, x0:x1]
    return legend_swatches(band), panels


def expected_legend(results, slice_index: int) -> list[tuple[int, int, int]]:
    """The colours of the structures on a reference-grid slice, from the label maps themselves."""
    organs = sitk.GetArrayFromImage(results.organs)[slice_index]
    pdac = sitk.GetArrayFromImage(results.pdac_mask)[slice_index]
    lns = sitk.GetArrayFromImage(results.ln_instances)[slice_index]
    out = []
    if pdac.any():
        out.append(style.PDAC_RGB)
    if np.isin(lns, [n.index for n in results.positive_nodes]).any():
        out.append(style.LN_POSITIVE_RGB)
    if np.isin(lns, [n.index for n in results.negative_nodes]).any():
        out.append(style.LN_NEGATIVE_RGB)
    out += [style.ORGAN_RGB[c.key] for c in ORGAN_CLASSES if (organs == c.label).any()]
    return out


@pytest.fixture(scope="module")
def results(tiny_study, tiny_study_dir):
    """Stand-in results whose series references come from the real phase selector (with the
    app.yaml rules and their regular expressions in the reason)."""
    base = results_from_study(tiny_study, tiny_study_dir)
    selection = select_phases(scan_folder(tiny_study_dir / "dicom").series)
    assert "(?i)" in selection.arterial_ref.reason  # what the PDF must not print
    venous = dataclasses.replace(base.venous, series=dataclasses.replace(
        base.venous.series, reason=selection.venous_ref.reason))
    arterial = dataclasses.replace(base.arterial, reason=selection.arterial_ref.reason)
    return dataclasses.replace(base, venous=venous, arterial=arterial)


@pytest.fixture(scope="module")
def pdf(results):
    return build_pdf(results)


def _texts(pdf_bytes: bytes, workdir: Path, pages: int) -> list[str]:
    path = workdir / "report.pdf"
    path.write_bytes(pdf_bytes)
    return [" ".join(subprocess.run([_tool("pdftotext"), "-layout", "-f", str(i), "-l", str(i), str(path), "-"],
                                    capture_output=True, text=True, check=True).stdout.split())
            for i in range(1, pages + 1)]


def test_page_one_verdict_key_image_node_table(results, pdf, tmp_path):
    texts = _texts(pdf.pdf_bytes, tmp_path, pdf.page_count)
    plan = PagePlan.of(len(pdf.key_images), len(results.lymph_nodes))
    assert pdf.page_count == plan.total
    first = texts[0]
    assert "Research use only" in first and "models trained on synthetic data" in first
    decision = first.index("Lymph node metastasis PREDICTED" if results.patient.positive else
                           "No lymph node metastasis predicted")
    assert first.index("Research use only".upper()) < decision  # the notice band stays above
    assert f"{results.patient.probability:.2f}" in first and f"{results.patient.threshold:.2f}" in first
    lead = lead_key_image([_Key(**k) for k in pdf.key_images])
    assert lead is not None and lead.title.split(":")[0] in first  # the key image's caption
    table = first.index(f"metastatic when its probability is \u2265 {results.ln_threshold:.2f} (node threshold)")
    assert decision < first.index(lead.title.split(":")[0]) < table
    # The table: the most probable nodes first, with class, probability, short axis, volume, place.
    top = sorted(results.lymph_nodes, key=lambda n: (-n.probability_positive, n.index))[0]
    row = (f"{top.index} {'metastatic' if top.positive else 'non-metastatic'} {top.probability_positive:.2f} "
           f"{top.short_axis_mm:.1f} {top.volume_mm3:.0f}")
    assert row in first[table:], row
    # The detail is on later pages: no rule text, no models table on page 1.
    for later in ("Series description", "Why chosen", "SHA-256", "Trained on", "(?i)", "series_selection.rules"):
        assert later not in first, later
    details = texts[plan.details_page - 1]
    assert "Series used" in details and "Models" in details and "SHA-256" in details
    assert "series description matched the arterial rule" in details
    assert "series description matched the venous rule" in details
    assert "(?i)" not in details and "\\b" not in details
    assert "Lymph nodes, by decreasing probability" in texts[plan.node_table_page - 1]
    for i, t in enumerate(texts, start=1):
        assert "not for clinical decisions" in t and f"Page {i} of {len(texts)}" in t


@dataclasses.dataclass
class _Key:
    target: str
    title: str
    slice_index: int
    sop_instance_uid: str


def test_plain_selection_reason():
    reason = ("rule series_selection.rules.venous[1] {SeriesDescription: '(?i).*(portal|\\\\bPV\\\\b).*', "
              "ImageType: ['ORIGINAL']} matched; 40 slices, AcquisitionTime 10:01:00")
    assert plain_selection_reason(reason) == ("series description and image type matched the venous rule "
                                              "(app.yaml series_selection, rule 2)")
    timing = "timing fallback: earliest of 2 contrast acquisition(s) by time (AcquisitionTime 10:00:00); 40 slices, AcquisitionTime 10:00:00"
    assert plain_selection_reason(timing) == ("no description rule matched; chosen by acquisition time: earliest of "
                                              "2 contrast acquisition(s) by time (AcquisitionTime 10:00:00)")


def legend_problems(results, pdf, workdir: Path) -> list[str]:
    """What is wrong with the legend of page 1's key image, read from the rendered page (empty when
    the legend shows exactly the structures on the slice, in order, each in its overlay colour)."""
    page = render_page(pdf.pdf_bytes, 1, workdir)
    swatches, panels = page_legend_and_overlays(page)
    lead = lead_key_image([_Key(**k) for k in pdf.key_images])
    expected = expected_legend(results, lead.slice_index)
    assert len(expected) >= 3 and swatches  # the check means something: several structures on the slice
    problems = []
    # The legend shows the structures on the slice in their colours (the SEG's display colours), in
    # the order of its labels (findings, then organs/vessels as lnmet.labels lists them)...
    if len(swatches) != len(expected) or any(np.abs(s - rgb).max() > 4 for s, rgb in zip(swatches, expected)):
        problems.append(f"legend colours {[tuple(s.round().astype(int)) for s in swatches]}, expected {expected}")
    # ...and those are the colours of the overlays in the panels.
    share, per_swatch = overlay_colour_check(panels, swatches)
    if share < MIN_EXPLAINED:
        problems.append(f"only {share:.0%} of the coloured overlay pixels have a legend colour")
    if min(per_swatch) < MIN_PIXELS_PER_SWATCH:
        problems.append(f"legend colours absent from the overlays (pixels per swatch {per_swatch})")
    return problems


def test_legend_colours_are_the_overlay_colours_on_the_rendered_page(results, pdf, tmp_path):
    assert legend_problems(results, pdf, tmp_path) == []


@pytest.mark.parametrize("fault", ["grey", "shifted"])
def test_a_wrong_legend_fails_the_check(results, tmp_path, monkeypatch, fault):
    """A grey legend under coloured overlays, or colours shifted by one label, is caught."""
    real = keyimages.legend_entries

    def wrong(*args):
        entries = real(*args)
        if fault == "grey":
            return [(label, (140, 140, 140)) for label, _ in entries]
        shifted = [rgb for _, rgb in entries[1:] + entries[:1]]
        return [(label, rgb) for (label, _), rgb in zip(entries, shifted)]

    monkeypatch.setattr(keyimages, "legend_entries", wrong)
    problems = legend_problems(results, build_pdf(results), tmp_path)
    assert problems and problems[0].startswith("legend colours")
    if fault == "grey":
        assert any("overlay pixels have a legend colour" in p for p in problems)


def test_markup_and_non_latin_text_in_descriptions(results, tmp_path):
    """Header text reaches the paragraphs through one escaping helper: shown literally, never parsed."""
    description = "<b>&amp; </para> Portal Портал 門脈"
    variant = dataclasses.replace(results, venous=dataclasses.replace(results.venous, series=dataclasses.replace(
        results.venous.series, series_description=description)), patient=dataclasses.replace(
        results.patient, statement="p < 0.5 & <i>unclosed"))
    pdf = build_pdf(variant)
    plan = PagePlan.of(len(pdf.key_images), len(variant.lymph_nodes))
    assert pdf.page_count == plan.total
    texts = _texts(pdf.pdf_bytes, tmp_path, pdf.page_count)
    assert "p < 0.5 & <i>unclosed" in texts[0]
    assert "<b>&amp; </para> Portal" in texts[plan.details_page - 1]


def _with_nodes(results, n_nodes: int, positive: set[int]):
    """The results with no tumour and ``n_nodes`` small nodes on a grid (probability decreasing
    with the index; those in ``positive`` metastatic), single-phase."""
    ref = results.reference
    lns = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint16)
    nz, ny, nx = lns.shape
    spots = [(z, y, x) for z in range(4, nz - 4, 6) for y in range(8, ny - 8, 8) for x in range(8, nx - 8, 8)]
    for i, (z, y, x) in enumerate(spots[:n_nodes], start=1):
        lns[z:z + 2, y:y + 2, x:x + 2] = i
    inst = sitk.GetImageFromArray(lns)
    inst.CopyInformation(ref)
    nodes = [dataclasses.replace(results.lymph_nodes[0], index=m.index, tracking_uid=f"2.25.{m.index}",
                                 volume_mm3=m.volume_mm3, short_axis_mm=m.short_axis_mm, long_axis_mm=m.long_axis_mm,
                                 mean_hu_venous=m.mean_hu_venous, centroid_mm=m.centroid_mm,
                                 nearest_structure=m.nearest_structure, distance_mm=m.distance_mm,
                                 probability_positive=1.0 - m.index / 100, positive=m.index in positive)
             for m in measure_lymph_nodes(inst, ref, results.organs)]
    empty = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ref)
    return dataclasses.replace(
        results, ln_instances=inst, lymph_nodes=nodes, pdac_mask=empty, arterial=None,
        tumour=dataclasses.replace(results.tumour, found=False, statement="no tumour found"),
        run=dataclasses.replace(results.run, single_phase=True))


def test_page_one_fits_with_many_nodes_and_says_where_the_rest_is(results, tmp_path):
    n = NODE_ROWS_PER_PAGE + 5  # two pages of node table
    variant = _with_nodes(results, n, positive={1, 2, 30})
    pdf = build_pdf(variant)
    plan = PagePlan.of(3, n)
    assert [k["target"] for k in pdf.key_images] == ["ln:1", "ln:2", "ln:30"]
    assert pdf.page_count == plan.total == 1 + 1 + 2 + 1  # page 1 did not overflow
    texts = _texts(pdf.pdf_bytes, tmp_path, pdf.page_count)
    first = texts[0]
    assert "Single-phase analysis" in first and "Lymph node 1: metastatic" in first
    assert first.count(" non-metastatic ") == FIRST_PAGE_NODE_ROWS - 2  # the table's rows after nodes 1 and 2
    assert f"{n - FIRST_PAGE_NODE_ROWS} more node(s) (1 metastatic) not shown here" in first
    assert f"page {plan.node_table_page}" in first and "Other key images: page 2" in first
    assert "Lymph node 2: metastatic" in texts[1] and "Lymph node 30: metastatic" in texts[1]
    assert "continued, 2/2" in texts[plan.node_table_page]


def test_page_one_without_key_image(results, tmp_path):
    variant = _with_nodes(results, 3, positive=set())
    pdf = build_pdf(variant)
    assert pdf.key_images == [] and pdf.page_count == PagePlan.of(0, 3).total == 3
    first = _texts(pdf.pdf_bytes, tmp_path, 1)[0]
    assert "No key image: no tumour was found and no node was classified metastatic" in first
