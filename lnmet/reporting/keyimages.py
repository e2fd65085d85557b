"""Key images for the PDF report: axial venous slices through the tumour and each positive node.

Each key image is one PNG with two panels: the whole axial slice (window W400/L40) with a box
around the region of interest, and a zoom on that region. Overlays: organs/vessels faint, PDAC gold,
metastatic nodes magenta, non-metastatic nodes cyan (the SEG's display colours), node numbers in
the zoom, a scale bar in each panel, orientation letters (radiological convention: the patient's
right on the image's left). Colour is kept for the structures: the annotations (box, letters, scale
bars, numbers) are white, so every coloured pixel is an overlay, and the legend under the panels
lists exactly the structures on the slice, each in its overlay colour (:func:`legend_entries`; the
PDF tests check this on the rendered page). Rendered with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from lnmet.labels import ORGAN_CLASSES  # noqa: E402
from lnmet.reporting import style  # noqa: E402
from lnmet.results import AnalysisResults  # noqa: E402

WINDOW_WIDTH = 400.0
WINDOW_LEVEL = 40.0
ZOOM_MIN_MM = 60.0  # the zoom panel shows at least this much (square)
ORGAN_ALPHA = 0.22
FINDING_ALPHA = 0.35
# Figure layout (fractions of the figure's height): the panels lie between PANELS_BOTTOM and
# PANELS_TOP, the titles above, the legend below.
PANELS_TOP = 0.86
PANELS_BOTTOM = 0.15
ANNOTATION_COLOUR = "white"


@dataclass
class KeyImage:
    """One rendered key image and what it shows."""

    target: str  # "tumour" or "ln:<index>"
    title: str
    slice_index: int  # index of the slice in the reference grid (= position in source_files)
    sop_instance_uid: str  # the venous source instance of that slice
    png: bytes


@dataclass
class _Oriented:
    """The volumes reoriented to LPS (rows anterior->posterior, columns right->left)."""

    ct: np.ndarray
    organs: np.ndarray
    pdac: np.ndarray
    lns: np.ndarray
    spacing: tuple[float, float, float]
    image: sitk.Image


def _orient(results: AnalysisResults) -> _Oriented:
    def o(img: sitk.Image) -> sitk.Image:
        return sitk.DICOMOrient(img, "LPS")

    ct = o(results.reference)
    return _Oriented(
        ct=sitk.GetArrayFromImage(ct), organs=sitk.GetArrayFromImage(o(results.organs)),
        pdac=sitk.GetArrayFromImage(o(results.pdac_mask)), lns=sitk.GetArrayFromImage(o(results.ln_instances)),
        spacing=ct.GetSpacing(), image=ct)


def _source_index(results: AnalysisResults, oriented: sitk.Image, z: int, yx: tuple[float, float]) -> int:
    """Index in the reference grid (source instance order) of oriented slice ``z`` at row/column ``yx``."""
    point = oriented.TransformContinuousIndexToPhysicalPoint((float(yx[1]), float(yx[0]), float(z)))
    return int(round(results.reference.TransformPhysicalPointToContinuousIndex(point)[2]))


def _findings(o: _Oriented, z: int, results: AnalysisResults) -> list[tuple[str, np.ndarray, tuple[int, int, int]]]:
    """The findings on slice ``z``: (legend label, mask, colour), drawn over the organs."""
    pos_idx = [n.index for n in results.positive_nodes]
    neg_idx = [n.index for n in results.negative_nodes]
    return [("PDAC", o.pdac[z] > 0, style.PDAC_RGB),
            ("LN metastatic", np.isin(o.lns[z], pos_idx), style.LN_POSITIVE_RGB),
            ("LN non-metastatic", np.isin(o.lns[z], neg_idx), style.LN_NEGATIVE_RGB)]


def legend_entries(o: _Oriented, z: int, results: AnalysisResults) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, RGB 0-255) of every structure drawn on slice ``z``, in the colour it is drawn in:
    the findings first, then the organs/vessels."""
    entries = [(label, rgb) for label, m, rgb in _findings(o, z, results) if m.any()]
    present = set(np.unique(o.organs[z]).tolist())
    entries += [(c.name, style.ORGAN_RGB[c.key]) for c in ORGAN_CLASSES if c.label in present]
    return entries


def _overlay(ax, o: _Oriented, z: int, extent, show_numbers: bool, results: AnalysisResults) -> None:
    ny, nx = o.ct.shape[1:]
    rgba = np.zeros((ny, nx, 4), np.float32)
    for c in ORGAN_CLASSES:
        m = o.organs[z] == c.label
        rgba[m, :3] = style.rgb01(style.ORGAN_RGB[c.key])
        rgba[m, 3] = ORGAN_ALPHA
    findings = [(m, rgb) for _, m, rgb in _findings(o, z, results)]
    for m, rgb in findings:
        rgba[m, :3] = style.rgb01(rgb)
        rgba[m, 3] = FINDING_ALPHA
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    sx, sy = o.spacing[0], o.spacing[1]
    xs = (np.arange(nx) + 0.5) * sx
    ys = (np.arange(ny) + 0.5) * sy
    for m, rgb in findings:
        if m.any():
            ax.contour(xs, ys, m.astype(np.float32), levels=[0.5], colors=[style.rgb01(rgb)], linewidths=1.0)
    if show_numbers:
        for idx in np.unique(o.lns[z]):
            if idx == 0:
                continue
            yy, xx = np.nonzero(o.lns[z] == idx)
            ax.text((xx.max() + 1.5) * sx, (yy.min() - 0.5) * sy, str(int(idx)), color=ANNOTATION_COLOUR, fontsize=8,
                    fontweight="bold", ha="left", va="bottom", clip_on=True,  # none outside the zoom
                    bbox=dict(boxstyle="round,pad=0.1", fc="black", ec="none", alpha=0.6))


def _render(results: AnalysisResults, o: _Oriented, z: int, focus: np.ndarray, title: str) -> bytes:
    ny, nx = o.ct.shape[1:]
    sx, sy = o.spacing[0], o.spacing[1]
    w_mm, h_mm = nx * sx, ny * sy
    extent = (0.0, w_mm, h_mm, 0.0)
    lo, hi = WINDOW_LEVEL - WINDOW_WIDTH / 2, WINDOW_LEVEL + WINDOW_WIDTH / 2
    yy, xx = np.nonzero(focus)
    cy, cx = (yy.mean() + 0.5) * sy, (xx.mean() + 0.5) * sx
    half = max(ZOOM_MIN_MM, (np.ptp(xx) + 1) * sx * 2.5, (np.ptp(yy) + 1) * sy * 2.5) / 2
    half = min(half, max(w_mm, h_mm) / 2)
    x0, x1 = np.clip([cx - half, cx + half], 0, w_mm)
    y0, y1 = np.clip([cy - half, cy + half], 0, h_mm)

    fig, axes = plt.subplots(1, 2, figsize=(7.4, 3.9), dpi=150, facecolor="black")
    for ax, zoom in zip(axes, (False, True)):
        ax.set_facecolor("black")
        ax.imshow(o.ct[z], cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="bilinear")
        _overlay(ax, o, z, extent, show_numbers=zoom, results=results)
        if zoom:
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)
            _scale_bar_at(ax, x0, x1, y0, y1)
        else:
            ax.set_xlim(0, w_mm)
            ax.set_ylim(h_mm, 0)
            ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=ANNOTATION_COLOUR, lw=1.0,
                                            ls="--"))
            _scale_bar_at(ax, 0.0, w_mm, 0.0, h_mm)
            for text, (px, py) in (("R", (0.02, 0.5)), ("L", (0.98, 0.5)), ("A", (0.5, 0.97)), ("P", (0.5, 0.03))):
                ax.text(px, py, text, transform=ax.transAxes, color=ANNOTATION_COLOUR, fontsize=9, fontweight="bold",
                        ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.7))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0].set_title("Axial, venous phase (W400/L40)", color="white", fontsize=8)
    axes[1].set_title("Zoom", color="white", fontsize=8)
    fig.suptitle(title, color="white", fontsize=10, fontweight="bold")
    # Each structure on this slice in its overlay colour (not one grey swatch for all organs).
    handles = [mpatches.Patch(color=style.rgb01(rgb), label=label) for label, rgb in legend_entries(o, z, results)]
    leg = fig.legend(handles=handles, loc="lower center", ncol=max(1, min(len(handles), 5)), fontsize=7,
                     frameon=False)
    for t in leg.get_texts():
        t.set_color("white")
    fig.subplots_adjust(left=0.01, right=0.99, top=PANELS_TOP, bottom=PANELS_BOTTOM, wspace=0.03)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="black")
    plt.close(fig)
    return buf.getvalue()


def _scale_bar_at(ax, x0: float, x1: float, y0: float, y1: float) -> None:
    width = x1 - x0
    nice = [5, 10, 20, 50]
    length = max([n for n in nice if n <= width * 0.3] or [nice[0]])
    bx, by = x0 + width * 0.05, y1 - (y1 - y0) * 0.06
    ax.plot([bx, bx + length], [by, by], color=ANNOTATION_COLOUR, lw=3, solid_capstyle="butt")
    ax.text(bx + length / 2, by - (y1 - y0) * 0.025, f"{length} mm", color=ANNOTATION_COLOUR, ha="center",
            va="bottom", fontsize=7, fontweight="bold")


def render_key_images(results: AnalysisResults) -> list[KeyImage]:
    """The tumour's key image (if a tumour was found), then one per positive node by decreasing
    probability; each through the axial slice where the target's area is largest."""
    o = _orient(results)
    targets: list[tuple[str, str, np.ndarray]] = []
    if results.tumour.found and o.pdac.any():
        t = results.tumour
        targets.append(("tumour", f"Tumour (PDAC): {t.volume_mm3 / 1000:.1f} mL, "
                        f"max axial diameter {t.max_axial_diameter_mm:.0f} mm", o.pdac > 0))
    for n in sorted(results.positive_nodes, key=lambda n: -n.probability_positive):
        targets.append((f"ln:{n.index}", f"Lymph node {n.index}: metastatic, p = {n.probability_positive:.2f}, "
                        f"short axis {n.short_axis_mm:.0f} mm", o.lns == n.index))
    headers = results.source_headers()
    series_number = results.venous.series.series_number
    images = []
    for target, title, mask in targets:
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        yy, xx = np.nonzero(mask[z])
        k = _source_index(results, o.image, z, (float(yy.mean()), float(xx.mean())))
        images.append(KeyImage(target=target, title=title, slice_index=k,
                               sop_instance_uid=results.venous.sop_instance_uids[k],
                               png=_render(results, o, z, mask[z], f"{title}  [series {series_number}, "
                                           f"image {getattr(headers[k], 'InstanceNumber', k + 1)}]")))
    return images
