"""The quality gate: is the scan inside what the models know, and is what they produced plausible?

The models were trained on two-phase contrast-enhanced CT of the upper abdomen (synthetic studies).
Before their output becomes a verdict, :func:`assess_quality` measures the scan and the model
outputs and compares every measurement with an accepted range from app.yaml ``quality_gate``
(ranges from the anatomy and CT literature, see docs/QUALITY_GATE.md; never tuned to the models):

- coverage: the scan's craniocaudal length, the body's left-right width (a head or a limb is far
  narrower than an abdomen), the segmented pancreas wholly inside the scan with a margin;
- anatomy: the volume of each of the 10 organs/vessels (present, not absurdly large; an organ cut
  by the edge of the field of view is only held to the upper limit), the aortic diameter, organs
  mostly in one connected piece, the spleen to the patient's left of the aorta and the pancreas in
  front of it;
- contrast phase as claimed: median HU inside the segmented aorta (both phases) and spleen (venous),
  and the arterial phase brighter than the venous one in the aorta; the segmented pancreas is
  parenchyma, not fat (a model that fills in a missing organ from its surroundings);
- intensities inside the range each model was trained on (its metadata's ``normalization.clip_hu``:
  the 0.5-99.5 percentiles of its training foreground), measured on the tissue voxels of the same
  kind (organs for the organ model, the attended region for the node models, the tumour for the
  tumour model; air and gas left out);
- lymph nodes: their number, and how deep under the skin the shallowest one lies (nodes in the
  skin, the body wall or outside the body are impossible).

Each check gives a :class:`QualityCheck` (name, value, unit, accepted range, pass/fail/not
applicable, severity, one-line reason). A failed check of severity ``critical`` makes the study
*not assessable* (:attr:`QualityReport.assessable`); a failed ``warning`` is reported only. Every
measurement runs on the working grid (the models' 1.5 mm grid): a few seconds on a standard study.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lnmet.labels import ORGAN_BY_KEY, ORGAN_CLASSES
from lnmet.quality_checks import CHECKS, CRITICAL, WARNING, volume_check_name  # noqa: F401 (part of this API)
from lnmet.types import LymphNodeFinding, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from lnmet.config import QualityCheckSetting, QualityGateSettings
    from lnmet.types import RegisteredPhases

log = logging.getLogger(__name__)

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not_applicable"
ASSESSED, NOT_ASSESSABLE = "assessed", "not_assessable"

BODY_THRESHOLD_HU = -500.0  # air/lung below, every tissue of the body above
# An organ closer than this to a face of the field of view counts as cut by it: a segmentation
# fades out within a few voxels of the image's edge (the networks see zero padding there), so an
# organ that leaves the image may stop short of its last slice.
EDGE_MARGIN_MM = 10.0

# The voxels each bundled model's normalisation statistics came from (training/datasets.py
# ``foreground_samples``: the labels, or the labels and the attended region for the node task; the
# patient classifier: body pixels of its tumour-centred patches). The intensity check compares the
# scan's voxels of the same kind with the model's ``clip_hu``. A model not listed is left out, saying so.
# A model whose training grew its foreground (the PDAC task since main's b00c3f3: by 20 mm) should say
# so in its metadata as ``normalization_margin_mm``; it is read when present.
TRAINING_FOREGROUND: dict[str, str] = {
    "organ_seg": "organs",
    "ln_seg": "attended region",
    "ln_cls": "attended region",
    "pdac_seg": "tumour",
    "patient_cls": "body around the tumour",
}


BODY_WALL_DEPTH_MM = 20.0  # nodes_in_body_wall's depth limit when node_depth_mm has no minimum


@dataclass(frozen=True)
class QualityCheck:
    """One check of the quality gate."""

    name: str
    value: float | None  # None when nothing could be measured
    unit: str
    min: float | None  # accepted range (None = unbounded on that side)
    max: float | None
    result: str  # PASS | FAIL | NOT_APPLICABLE
    severity: str  # CRITICAL | WARNING
    reason: str  # one line: what was measured and why it passed or failed

    @property
    def failed(self) -> bool:
        return self.result == FAIL

    @property
    def blocking(self) -> bool:
        """A failed critical check: the study is not assessable."""
        return self.result == FAIL and self.severity == CRITICAL

    @property
    def accepted(self) -> str:
        """The accepted range as text, e.g. ``>= 90 mm`` or ``50 to 2000 mL``."""
        return accepted_text(self.min, self.max, self.unit)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "min": self.min, "max": self.max,
                "result": self.result, "severity": self.severity, "reason": self.reason}


@dataclass
class QualityReport:
    """All checks of one study; :attr:`assessable` is False when a critical check failed."""

    checks: list[QualityCheck] = field(default_factory=list)
    seconds: float = 0.0
    # The patient classifier's probability on a study that is not assessable: kept for research
    # (results.json, marked "not a decision"), never shown as a result.
    withheld_probability: float | None = None

    @property
    def assessable(self) -> bool:
        return not any(c.blocking for c in self.checks)

    @property
    def status(self) -> str:
        return ASSESSED if self.assessable else NOT_ASSESSABLE

    @property
    def blocking(self) -> list[QualityCheck]:
        return [c for c in self.checks if c.blocking]

    @property
    def warnings(self) -> list[QualityCheck]:
        return [c for c in self.checks if c.failed and not c.blocking]

    def check(self, name: str) -> QualityCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no quality check named {name!r}")

    def summary(self) -> str:
        """One line for logs and reports."""
        if self.assessable:
            n_na = sum(c.result == NOT_APPLICABLE for c in self.checks)
            text = (f"assessed: {sum(c.result == PASS for c in self.checks)} of {len(self.checks)} quality checks "
                    f"passed" + (f", {n_na} not applicable" if n_na else ""))
            if self.warnings:
                text += "; warnings: " + "; ".join(f"{c.name} ({c.reason})" for c in self.warnings)
            return text
        return "NOT ASSESSABLE: " + "; ".join(f"{c.name}: {c.reason}" for c in self.blocking)


def accepted_text(lo: float | None, hi: float | None, unit: str) -> str:
    u = "" if unit in ("fraction", "nodes") else f" {unit}"
    if lo is not None and hi is not None:
        return f"{_fmt(lo)} to {_fmt(hi)}{u}"
    if lo is not None:
        return f">= {_fmt(lo)}{u}"
    if hi is not None:
        return f"<= {_fmt(hi)}{u}"
    return "any value"


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) >= 1:
        return f"{int(v)}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

@dataclass
class GateInputs:
    """What the gate measures, all on the working grid (arrays ``[z, y, x]``)."""

    venous: np.ndarray  # HU
    arterial: np.ndarray | None  # HU, registered to the venous phase; None when single-phase
    organs: np.ndarray  # uint8 labels of lnmet.labels.ORGAN_CLASSES
    grid: sitk.Image  # the working grid (the arrays are its leading part: index [0, 0, 0] is its first voxel)
    scan_length_mm: float  # of the venous series on its own grid
    attention: np.ndarray | None = None  # attention map (> 0 where the node model looks)
    pdac: np.ndarray | None = None  # the tumour mask
    nodes: Sequence[LymphNodeFinding] = ()
    models: Sequence[ModelInfo] = ()

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = self.grid.GetSpacing()
        return float(sz), float(sy), float(sx)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.grid.GetSpacing())) / 1000.0

    @property
    def lr_axis(self) -> int:
        """The array axis (1 = rows, 2 = columns) closest to the patient's left-right direction."""
        d = self.grid.GetDirection()  # row-major 3x3: d[3 * i + j] = LPS component i of image axis j
        return 2 if abs(d[0]) >= abs(d[1]) else 1


def _inside_reference(reference: sitk.Image, working: sitk.Image) -> tuple[slice, slice, slice]:
    """The part ``[z, y, x]`` of the working grid whose voxel centres lie inside the reference image.

    The working grid shares the reference's origin and direction but may end up to one voxel beyond
    its last voxel centre (the extent is rounded up): the resampled images hold the default -1024 HU
    there, which would look like air around the body."""
    keep = []
    for n_ref, s_ref, n_w, s_w in zip(reference.GetSize(), reference.GetSpacing(), working.GetSize(),
                                      working.GetSpacing()):
        last = (n_ref - 1) * s_ref + 1e-3
        keep.append(max(1, min(n_w, int(math.floor(last / s_w)) + 1)))
    return slice(0, keep[2]), slice(0, keep[1]), slice(0, keep[0])


def gate_inputs(registered: "RegisteredPhases", organs_working: sitk.Image, *, attention: sitk.Image | None = None,
                pdac_working: sitk.Image | None = None, nodes: Sequence[LymphNodeFinding] = (),
                models: Sequence[ModelInfo] = ()) -> GateInputs:
    """:class:`GateInputs` from the pipeline's objects (:class:`lnmet.types.RegisteredPhases` and the
    working-grid outputs of the organ, attention and tumour operators), limited to the reference
    image's field of view."""
    working = registered.working_venous
    if working.GetSize() != organs_working.GetSize():
        raise ValueError(f"quality gate: organ labels {organs_working.GetSize()} and the working venous image "
                         f"{working.GetSize()} are not on the same grid")
    ref = registered.reference
    box = _inside_reference(ref, working)

    def arr(image: sitk.Image | None, dtype) -> np.ndarray | None:
        # a copy: a view of the image's buffer would dangle once the image is freed
        return None if image is None else np.array(sitk.GetArrayViewFromImage(image)[box], dtype=dtype, copy=True)

    arterial = None
    if not registered.single_phase and registered.working_arterial is not None:
        arterial = arr(registered.working_arterial, np.float32)
    return GateInputs(
        venous=arr(working, np.float32), arterial=arterial, organs=arr(organs_working, np.uint8), grid=working,
        scan_length_mm=float(ref.GetSize()[2] * ref.GetSpacing()[2]),
        attention=arr(attention, np.float32), pdac=arr(pdac_working, np.uint8),
        nodes=list(nodes), models=list(models))


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def body_mask(venous: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The body: voxels above ``threshold_hu``, largest connected piece, holes (lungs, bowel gas)
    filled slice by slice.

    A hole is a piece of background (4-connected within its slice) that does not reach the edge of
    its slice; one labelling of the whole volume finds them all (the structure does not connect
    slices, so the first and last slice are filled like any other)."""
    mask = venous > threshold_hu
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    background, n_bg = ndimage.label(~mask, structure=in_plane)
    reaches_edge = np.zeros(n_bg + 1, bool)
    for face in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        reaches_edge[face] = True
    reaches_edge[0] = False  # label 0 is the body itself
    return ~reaches_edge[background]


def skin_shell(body: np.ndarray) -> np.ndarray:
    """The voxels outside ``body`` that share a face with it: the layer just outside the skin
    (the body's 6-connected dilation minus the body, by shifted comparisons)."""
    shell = np.zeros_like(body)
    for axis in range(body.ndim):
        lower = [slice(None)] * body.ndim
        upper = [slice(None)] * body.ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        shell[tuple(lower)] |= body[tuple(upper)]
        shell[tuple(upper)] |= body[tuple(lower)]
    return shell & ~body


def _edge_voxels(spacing_zyx: Sequence[float]) -> list[int]:
    """:data:`EDGE_MARGIN_MM` in voxels along each axis (at least 1)."""
    return [max(1, int(math.ceil(EDGE_MARGIN_MM / s))) for s in spacing_zyx]


def _touches_edge(mask: np.ndarray, spacing_zyx: Sequence[float], box: tuple[slice, ...] | None = None) -> bool:
    """True when the mask (bounding box ``box`` if known) comes within :data:`EDGE_MARGIN_MM` of a
    face of the field of view."""
    box = box if box is not None else _box(mask, pad=0)
    if box is None:
        return False
    return any(sl.start < m or sl.stop > n - m for sl, n, m in zip(box, mask.shape, _edge_voxels(spacing_zyx)))


def _box(mask: np.ndarray, pad: int = 1, box: tuple[slice, ...] | None = None) -> tuple[slice, ...] | None:
    """The mask's bounding box grown by ``pad`` voxels (``box``: the tight box, when already known)."""
    if box is None:
        boxes = ndimage.find_objects(mask.view(np.uint8))
        if not boxes or boxes[0] is None:
            return None
        box = boxes[0]
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, mask.shape))


def _core(mask: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """The mask without its boundary voxels (partial volume with the neighbours), if anything is left."""
    box = _box(mask, box=box)
    if box is None:
        return mask
    eroded = np.zeros_like(mask)
    eroded[box] = ndimage.binary_erosion(mask[box])
    return eroded if eroded.any() else mask


def _pieces(mask: np.ndarray, edge_vox: Sequence[int] = (1, 1, 1), box: tuple[slice, ...] | None = None
            ) -> tuple[np.ndarray, np.ndarray, set[int], tuple[slice, ...]] | None:
    """26-connected pieces of the mask inside its bounding box: labels, sizes (index = label - 1),
    the labels of the pieces within ``edge_vox`` voxels of a face of the whole array, and the box."""
    box = _box(mask, pad=0, box=box)
    if box is None:
        return None
    labels, _ = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    edge: set[int] = set()
    for axis, (sl, n, m) in enumerate(zip(box, mask.shape, edge_vox)):
        near_low = max(0, m - sl.start)  # box planes within m voxels of face 0
        near_high = max(0, sl.stop - (n - m))  # ... and of the far face
        if near_low:
            edge |= set(np.unique(np.take(labels, range(min(near_low, labels.shape[axis])), axis=axis)).tolist())
        if near_high:
            far = range(max(0, labels.shape[axis] - near_high), labels.shape[axis])
            edge |= set(np.unique(np.take(labels, far, axis=axis)).tolist())
    edge.discard(0)
    return labels, sizes, edge, box


def largest_piece_fraction(mask: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                           edge_margin_mm: float = 0.0, box: tuple[slice, ...] | None = None) -> float:
    """Share of the mask's voxels in its largest connected piece (26-connectivity). Pieces within
    ``edge_margin_mm`` of the edge of the field of view may join outside it, so together they count
    as one."""
    edge_vox = [max(1, int(math.ceil(edge_margin_mm / s))) for s in spacing_zyx]
    found = _pieces(mask, edge_vox, box)
    if found is None:
        return 0.0
    _, sizes, edge, _ = found
    if len(sizes) <= 1:
        return 1.0
    best = max(int(sizes.max()), sum(int(sizes[i - 1]) for i in edge))
    return float(best / sizes.sum())


def largest_piece(mask: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """The mask's largest connected piece (26-connectivity)."""
    found = _pieces(mask, box=box)
    if found is None:
        return mask
    labels, sizes, _, box = found
    out = np.zeros_like(mask)
    out[box] = labels == int(np.argmax(sizes)) + 1
    return out


class _Measure:
    """Measurements shared by several checks, computed once."""

    def __init__(self, inputs: GateInputs):
        self.x = inputs
        self.done: dict[str, QualityCheck] = {}  # the checks made so far, by name
        self.cache: dict[str, Any] = {}  # measurements shared by checks
        self._body: np.ndarray | None = None
        self._skin: Any = None
        self._masks: dict[int, np.ndarray] = {}
        self._boxes = ndimage.find_objects(inputs.organs)  # every label's bounding box in one pass

    @property
    def body(self) -> np.ndarray:
        if self._body is None:
            self._body = body_mask(self.x.venous)
        return self._body

    def organ(self, key: str) -> np.ndarray:
        label = ORGAN_BY_KEY[key].label
        if label not in self._masks:
            self._masks[label] = self.x.organs == label
        return self._masks[label]

    def box(self, key: str) -> tuple[slice, ...] | None:
        label = ORGAN_BY_KEY[key].label
        return self._boxes[label - 1] if label <= len(self._boxes) else None

    def centre_lps(self, key: str, slices: slice | None = None) -> np.ndarray | None:
        """Centre of mass (LPS, mm) of organ ``key``, of its voxels in the array slices ``slices`` when
        given; None when there are none."""
        box = self.box(key)
        if box is None:
            return None
        if slices is not None:
            zs = slice(max(box[0].start, slices.start), min(box[0].stop, slices.stop))
            if zs.start >= zs.stop:
                return None
            box = (zs, box[1], box[2])
        part = self.organ(key)[box]
        if not part.any():
            return None
        centre = np.asarray(ndimage.center_of_mass(part)) + [sl.start for sl in box]  # z, y, x
        return np.asarray(self.x.grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre[::-1]]))

    def depth_at(self, zyx: np.ndarray) -> np.ndarray | None:
        """Distance (mm) from each voxel ``zyx`` [N, 3] to the nearest voxel outside the body (0
        for a voxel outside it); None when no voxel outside the body is in the field of view (the
        skin cannot be seen)."""
        from scipy.spatial import cKDTree

        body = self.body
        if self._skin is None:
            points = np.argwhere(skin_shell(body)) * np.asarray(self.x.spacing_zyx)
            self._skin = cKDTree(points) if len(points) else False
        if self._skin is False:
            return None
        zyx = np.asarray(zyx, dtype=int)
        inside = np.all((zyx >= 0) & (zyx < np.asarray(body.shape)), axis=1)
        depth = np.zeros(len(zyx))
        if inside.any():
            idx = zyx[inside]
            d, _ = self._skin.query(idx * np.asarray(self.x.spacing_zyx))
            depth[inside] = np.where(body[idx[:, 0], idx[:, 1], idx[:, 2]], d, 0.0)
        return depth


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def _judge(setting: "QualityCheckSetting", unit: str, value: float | None, what: str, *,
           apply_min: bool = True, note: str = "", missing: str = "") -> QualityCheck:
    """Compare ``value`` with the setting's accepted range.

    ``value`` None: FAIL with ``missing`` as the reason when given (something needed was not
    there), else NOT_APPLICABLE with ``note`` as the reason. ``apply_min`` False: the value is only
    a lower bound of the truth (e.g. an organ cut by the field of view), so only the upper limit
    can fail; below the lower limit the check is NOT_APPLICABLE, saying why (``note``)."""
    lo, hi, severity = setting.min, setting.max, setting.severity

    def result(res: str, val: float | None, reason: str) -> QualityCheck:
        return QualityCheck(setting.name, val, unit, lo, hi, res, severity, reason)

    if value is None:
        return result(FAIL, None, missing) if missing else result(NOT_APPLICABLE, None, note or "not applicable")
    value = float(value)
    rng = accepted_text(lo, hi, unit)
    shown = (f"{value:.3f}" if unit == "fraction" else f"{value:.0f}" if unit == "nodes" or abs(value) >= 10
             else f"{value:.1f}")
    text = f"{what} {shown}{'' if unit in ('fraction', 'nodes') else ' ' + unit}"
    suffix = f"; {note}" if note else ""
    if hi is not None and value > hi:
        return result(FAIL, value, f"{text}, above the accepted {rng}{suffix}")
    if lo is not None and value < lo:
        if not apply_min:
            return result(NOT_APPLICABLE, value, f"{text}{suffix}: only the upper limit applies")
        return result(FAIL, value, f"{text}, below the accepted {rng}{suffix}")
    return result(PASS, value, f"{text} (accepted {rng}){suffix}")


def _scan_length(m: _Measure, s) -> QualityCheck:
    return _judge(s, "mm", m.x.scan_length_mm, "scan length")


def _body_width(m: _Measure, s) -> QualityCheck:
    body = m.body
    if not body.any():
        return _judge(s, "mm", None, "", missing="no body in the image (nothing above -500 HU)")
    axis = m.x.lr_axis
    spacing = m.x.spacing_zyx[axis]
    widths, cut = [], 0
    for z in range(body.shape[0]):
        profile = body[z].any(axis=0) if axis == 2 else body[z].any(axis=1)  # body[z] is [y, x]
        idx = np.flatnonzero(profile)
        if idx.size == 0:
            continue
        widths.append((idx[-1] - idx[0] + 1) * spacing)
        cut += int(idx[0] == 0 or idx[-1] == profile.size - 1)
    width = float(np.median(widths))
    truncated = cut > len(widths) / 2
    return _judge(s, "mm", width, "body width", apply_min=not truncated,
                  note="the body is cut by the field of view (its width is larger)" if truncated else "")


def _pancreas_margin(m: _Measure, s) -> QualityCheck:
    pancreas = largest_piece(m.organ("pancreas"), m.box("pancreas"))  # stray pieces: the connectivity check
    zs = np.flatnonzero(pancreas.any(axis=(1, 2)))
    if zs.size == 0:
        return _judge(s, "mm", None, "", missing="no pancreas segmented: the scan may not cover it")
    n = pancreas.shape[0]
    dz = m.x.spacing_zyx[0]
    margin = float(min(zs[0], n - 1 - zs[-1]) * dz)
    first_is_caudal = m.x.grid.GetDirection()[8] >= 0  # slices run towards +z (LPS: cranial)
    near_first = zs[0] <= n - 1 - zs[-1]
    end = "caudal" if near_first == first_is_caudal else "cranial"
    return _judge(s, "mm", margin, f"pancreas to the {end} end of the scan")


def _volume_check(key: str) -> Callable[[_Measure, Any], QualityCheck]:
    def check(m: _Measure, s) -> QualityCheck:
        mask = m.organ(key)
        volume = float(mask.sum()) * m.x.voxel_ml
        name = ORGAN_BY_KEY[key].name.lower()
        if volume == 0.0:
            return _judge(s, "mL", 0.0, f"{name}: none segmented, volume")
        truncated = _touches_edge(mask, m.x.spacing_zyx, m.box(key))
        return _judge(s, "mL", volume, f"{name} volume", apply_min=not truncated,
                      note="cut by the field of view" if truncated else "")
    return check


def _aorta_diameter(m: _Measure, s) -> QualityCheck:
    aorta = m.organ("aorta")
    areas = aorta.sum(axis=(1, 2))
    areas = areas[areas > 0]
    if areas.size == 0:
        return _judge(s, "mm", None, "", missing="no aorta segmented")
    sz, sy, sx = m.x.spacing_zyx
    diameter = float(2.0 * math.sqrt(float(np.median(areas)) * sy * sx / math.pi))
    return _judge(s, "mm", diameter, "aortic diameter")


def _connectivity(m: _Measure, s) -> QualityCheck:
    worst, worst_key = None, ""
    for key in s.structures:
        mask = m.organ(key)
        if not mask.any():
            continue
        frac = largest_piece_fraction(mask, m.x.spacing_zyx, EDGE_MARGIN_MM, m.box(key))
        if worst is None or frac < worst:
            worst, worst_key = frac, key
    if worst is None:
        return _judge(s, "fraction", None, "", note="none of the organs checked was segmented")
    return _judge(s, "fraction", worst, f"{ORGAN_BY_KEY[worst_key].name.lower()} in one piece:")


def _median_in(image: np.ndarray | None, m: _Measure, key: str) -> float | None:
    """Median of ``image`` inside organ ``key`` without its boundary voxels (partial volume)."""
    mask, box = m.organ(key), m.box(key)
    if image is None or box is None:
        return None
    return float(np.median(image[_core(mask, box)]))


# The shape checks that must pass before the attenuation inside an organ means anything: HU
# measured inside a segmentation that is not that organ (e.g. an "aorta" 8 mm wide on the spine)
# says nothing about the contrast phase.
_SHAPE_CHECKS = {"aorta": ("volume_aorta_ml", "aorta_diameter_mm"),
                 "spleen": ("volume_spleen_ml", "spleen_left_of_aorta_mm"),
                 "pancreas": ("volume_pancreas_ml", "pancreas_anterior_to_aorta_mm")}


def _unreliable(m: _Measure, key: str) -> str:
    """Why the attenuation inside the segmented ``key`` cannot be trusted ('' when it can)."""
    for check in _SHAPE_CHECKS[key]:
        c = m.done.get(check)
        if c is not None and c.failed:
            return f"the segmented {ORGAN_BY_KEY[key].name.lower()} is implausible ({c.reason})"
    return ""


def _position_not_judged(m: _Measure, s, key: str) -> QualityCheck | None:
    """NOT_APPLICABLE when the position of ``key`` relative to the aorta cannot be judged: either is
    missing, or the aorta is implausible (their own checks fail for that, saying why)."""
    for k in (key, "aorta"):
        if m.box(k) is None:
            return _judge(s, "mm", None, "", note=f"not judged: no {ORGAN_BY_KEY[k].name.lower()} segmented")
    problem = _unreliable(m, "aorta")
    return _judge(s, "mm", None, "", note=f"not judged: {problem}") if problem else None


def _spleen_left_of_aorta(m: _Measure, s) -> QualityCheck:
    not_judged = _position_not_judged(m, s, "spleen")
    if not_judged is not None:
        return not_judged
    spleen, aorta = m.centre_lps("spleen"), m.centre_lps("aorta")
    return _judge(s, "mm", float(spleen[0] - aorta[0]), "spleen centre to the patient's left of the aorta by")  # LPS +x: left


def _pancreas_anterior_to_aorta(m: _Measure, s) -> QualityCheck:
    not_judged = _position_not_judged(m, s, "pancreas")
    if not_judged is not None:
        return not_judged
    pancreas = m.centre_lps("pancreas")
    aorta = m.centre_lps("aorta", m.box("pancreas")[0])  # the aorta beside the pancreas (it curves with the spine)
    note = ""
    if aorta is None:
        aorta, note = m.centre_lps("aorta"), "the aorta is not at the pancreas's levels: its centre over the scan"
    return _judge(s, "mm", float(aorta[1] - pancreas[1]), "pancreas centre in front of the aorta by",  # LPS +y: posterior
                  note=note)


def _unverifiable(s, unit: str, value: float, what: str, problem: str) -> QualityCheck:
    """A FAIL that reports what was measured but cannot be trusted (inside a mask that is not the organ)."""
    return QualityCheck(s.name, float(value), unit, s.min, s.max, FAIL, s.severity,
                        f"{what} cannot be verified: {problem}; {float(value):.0f} {unit} measured inside it")


def _attenuation(m: _Measure, s, key: str, phase: str, what: str) -> QualityCheck:
    image = m.x.venous if phase == "venous" else m.x.arterial
    if image is None:
        return _judge(s, "HU", None, "", note="single-phase study: no arterial phase")
    name = ORGAN_BY_KEY[key].name.lower()
    value = _median_in(image, m, key)
    if value is None:
        return _judge(s, "HU", None, "", missing=f"{what} cannot be verified: no {name} segmented")
    problem = _unreliable(m, key)
    if problem:
        return _unverifiable(s, "HU", value, what, problem)
    return _judge(s, "HU", value, f"{phase} phase, {name}")


def _venous_aorta(m: _Measure, s) -> QualityCheck:
    return _attenuation(m, s, "aorta", "venous", "the contrast phase")


def _venous_spleen(m: _Measure, s) -> QualityCheck:
    return _attenuation(m, s, "spleen", "venous", "the portal-venous enhancement")


def _venous_pancreas(m: _Measure, s) -> QualityCheck:
    return _attenuation(m, s, "pancreas", "venous", "the pancreatic parenchyma")


def _arterial_aorta(m: _Measure, s) -> QualityCheck:
    return _attenuation(m, s, "aorta", "arterial", "the contrast phase")


def _arterial_minus_venous(m: _Measure, s) -> QualityCheck:
    if m.x.arterial is None:
        return _judge(s, "HU", None, "", note="single-phase study: no arterial phase")
    art = _median_in(m.x.arterial, m, "aorta")
    ven = _median_in(m.x.venous, m, "aorta")
    if art is None or ven is None:
        return _judge(s, "HU", None, "", missing="the phases cannot be compared: no aorta segmented")
    problem = _unreliable(m, "aorta")
    if problem:
        return _unverifiable(s, "HU", art - ven, "the order of the phases", problem)
    return _judge(s, "HU", art - ven, f"aorta arterial {art:.0f} HU minus venous {ven:.0f} HU =")


def _training_regions(m: _Measure, model: ModelInfo) -> np.ndarray | None:
    """The voxels of ``model``'s kind of training foreground in this scan, air and gas left out
    (None when unknown)."""
    region = _foreground(m, model)
    # Air, lung and bowel gas (< -500 HU) are air whatever the scanner; below a model's lower clip
    # they all become the same input. The check is about tissue (calibration, contrast, scanner).
    return None if region is None else region & (m.x.venous > BODY_THRESHOLD_HU)


def _foreground(m: _Measure, model: ModelInfo) -> np.ndarray | None:
    kind = TRAINING_FOREGROUND.get(model.name)
    organs = m.x.organs > 0
    if kind == "organs":
        return organs
    if kind == "attended region":  # where the attention map is > 0 (the node labels lie inside it)
        return m.x.attention > 0 if m.x.attention is not None else None
    if kind == "tumour":  # grown by the metadata's normalization_margin_mm when it records one
        if m.x.pdac is None or not m.x.pdac.any():
            return None
        return _grown(m.x.pdac > 0, _margin_mm(model), m.x.spacing_zyx)
    if kind == "body around the tumour":
        if m.x.pdac is None or not m.x.pdac.any():
            return None
        box = _box(m.x.pdac > 0, pad=0)
        patch = model.metadata.get("patch_size") or []
        spacing = model.metadata.get("spacing_mm") or []
        half_mm = (0.5 * float(patch[0]) * float(spacing[0])) if patch and spacing else 0.0
        region = np.zeros_like(organs)
        sz, sy, sx = m.x.spacing_zyx
        py, px = int(round(half_mm / sy)), int(round(half_mm / sx))
        zs, ys, xs = box
        region[zs, max(0, ys.start - py):ys.stop + py, max(0, xs.start - px):xs.stop + px] = True
        return region & m.body
    return None


def _margin_mm(model: ModelInfo) -> float:
    """``normalization_margin_mm`` of the metadata (the training foreground grown by it), else 0."""
    try:
        return max(0.0, float((model.metadata or {}).get("normalization_margin_mm") or 0.0))
    except (TypeError, ValueError):
        return 0.0


def _grown(mask: np.ndarray, margin_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean, inside its bounding box grown by the margin)."""
    if margin_mm <= 0:
        return mask
    pad = max(int(math.ceil(margin_mm / s)) for s in spacing_zyx)
    box = _box(mask, pad=pad)
    out = np.zeros_like(mask)
    if box is not None:
        out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing_zyx) <= margin_mm
    return out


def _clip_ranges(model: ModelInfo) -> list[tuple[str, float, float]]:
    """``(channel name, lo, hi)`` of a model's normalisation, read defensively (list per channel or
    one object for all); entries without a usable ``clip_hu`` are skipped."""
    meta = model.metadata or {}
    norm = meta.get("normalization")
    names = [str(n) for n in (meta.get("channel_names") or [])]
    entries = norm if isinstance(norm, list) else ([norm] * max(1, len(names)) if isinstance(norm, dict) else [])
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        clip = entry.get("clip_hu")
        try:
            lo, hi = float(clip[0]), float(clip[1])
        except (TypeError, ValueError, IndexError, KeyError):
            continue
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            continue
        name = str(entry.get("channel") or (names[i] if i < len(names) else f"channel {i}"))
        out.append((name, lo, hi))
    return out


def _intensity(m: _Measure, s) -> QualityCheck:
    worst: tuple[float, str] | None = None
    skipped = []
    for model in m.x.models:
        ranges = _clip_ranges(model)
        region = _training_regions(m, model) if ranges else None
        if region is None or not region.any():
            skipped.append(model.name)
            continue
        for channel, lo, hi in ranges:
            low = channel.lower()
            if "arterial" in low:
                image = m.x.arterial if m.x.arterial is not None else m.x.venous  # single-phase: venous stands in
            elif "venous" in low:
                image = m.x.venous
            else:
                continue
            values = image[region]
            frac = float(np.mean((values >= lo) & (values <= hi)))
            text = (f"{model.name} {channel}: {100 * frac:.1f}% of the {TRAINING_FOREGROUND[model.name]} voxels "
                    f"inside its training range {lo:.0f} to {hi:.0f} HU, median {float(np.median(values)):.0f} HU;")
            if worst is None or frac < worst[0]:
                worst = (frac, text)
    if worst is None:
        return _judge(s, "fraction", None, "", note="no model's training intensity range could be compared")
    note = f"not compared: {', '.join(skipped)}" if skipped else ""
    return _judge(s, "fraction", worst[0], worst[1].rstrip(";") + "; share", note=note)


def _node_count(m: _Measure, s) -> QualityCheck:
    return _judge(s, "nodes", float(len(m.x.nodes)), "lymph nodes segmented:")


def _node_depths(m: _Measure) -> tuple[list, np.ndarray | None]:
    """The nodes and each one's depth beneath the skin (mm; None where no skin is in the field of
    view), computed once for the two node position checks."""
    if "node_depths" not in m.cache:
        nodes = list(m.x.nodes)
        depth = None
        if nodes:
            grid = m.x.grid
            zyx = np.array([[int(round(c)) for c in grid.TransformPhysicalPointToContinuousIndex(
                [float(v) for v in n.centroid_mm])[::-1]] for n in nodes])
            depth = m.depth_at(zyx)
        m.cache["node_depths"] = (nodes, depth)
    return m.cache["node_depths"]


def _node_depth(m: _Measure, s) -> QualityCheck:
    nodes, depth = _node_depths(m)
    if not nodes:
        return _judge(s, "mm", None, "", note="no lymph node segmented")
    if depth is None:
        return _judge(s, "mm", None, "", note="the skin is outside the field of view everywhere")
    order = np.argsort(depth)
    d0, i0 = float(depth[order[0]]), nodes[order[0]].index
    below = int(np.sum(depth < s.min)) if s.min is not None else 0
    extra = f" ({below} of {len(nodes)} nodes shallower)" if below > 1 else ""
    return _judge(s, "mm", d0, f"lymph node {i0}{extra} lies beneath the skin at")


def _nodes_in_body_wall(m: _Measure, s) -> QualityCheck:
    """How many nodes lie in the skin, subcutaneous fat or abdominal wall (shallower than
    node_depth_mm's minimum). One is a false detection, reported by node_depth_mm; several mean the
    node model is not reading this scan."""
    nodes, depth = _node_depths(m)
    if not nodes:
        return _judge(s, "nodes", None, "", note="no lymph node segmented")
    if depth is None:
        return _judge(s, "nodes", None, "", note="the skin is outside the field of view everywhere")
    limit = m.done["node_depth_mm"].min if "node_depth_mm" in m.done else None
    limit = BODY_WALL_DEPTH_MM if limit is None else float(limit)
    shallow = [n.index for n, d in zip(nodes, depth) if d < limit]
    names = f" (node{'s' if len(shallow) > 1 else ''} {', '.join(map(str, shallow))})" if shallow else ""
    return _judge(s, "nodes", float(len(shallow)), f"lymph nodes less than {limit:.0f} mm beneath the skin{names}:")


def _checks() -> dict[str, Callable[[_Measure, Any], QualityCheck]]:
    table: dict[str, Callable[[_Measure, Any], QualityCheck]] = {
        "scan_length_mm": _scan_length,
        "body_width_mm": _body_width,
        "pancreas_margin_mm": _pancreas_margin,
        **{volume_check_name(c.key): _volume_check(c.key) for c in ORGAN_CLASSES},
        "aorta_diameter_mm": _aorta_diameter,
        "organ_connectivity": _connectivity,
        "spleen_left_of_aorta_mm": _spleen_left_of_aorta,
        "pancreas_anterior_to_aorta_mm": _pancreas_anterior_to_aorta,
        "venous_aorta_hu": _venous_aorta,
        "venous_spleen_hu": _venous_spleen,
        "venous_pancreas_hu": _venous_pancreas,
        "arterial_aorta_hu": _arterial_aorta,
        "arterial_minus_venous_aorta_hu": _arterial_minus_venous,
        "intensity_in_training_range": _intensity,
        "node_count": _node_count,
        "node_depth_mm": _node_depth,
        "nodes_in_body_wall": _nodes_in_body_wall,
    }
    assert list(table) == list(CHECKS), "every check of CHECKS needs its function, in the same order"
    return table


def assess_quality(inputs: GateInputs, settings: "QualityGateSettings") -> QualityReport:
    """Run every check of app.yaml ``quality_gate`` on ``inputs`` (pure function)."""
    import time

    t0 = time.perf_counter()
    measure = _Measure(inputs)
    checks = []
    for name, fn in _checks().items():
        setting = settings.checks[name]
        try:
            checks.append(fn(measure, setting))
            measure.done[name] = checks[-1]
        except Exception as exc:  # noqa: BLE001 - a check that cannot be measured fails, saying why
            log.warning("quality check %s could not be measured: %s", name, exc, exc_info=True)
            checks.append(QualityCheck(name, None, CHECKS[name][0], setting.min, setting.max, FAIL, setting.severity,
                                       f"could not be measured: {type(exc).__name__}: {exc}"))
    report = QualityReport(checks=checks, seconds=time.perf_counter() - t0)
    return report
