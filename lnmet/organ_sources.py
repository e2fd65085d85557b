"""Organ/vessel labels from a segmentation the site already has (app.yaml ``organ_source``).

Hospitals that run AI on CT mostly run TotalSegmentator already, often with its DICOM SEG stored in
PACS. Six of the ten classes of the attention map are in its ``total`` task; the four small
arteries (SMA, truncus coeliacus & splenic artery, left gastric artery, common & proper hepatic
artery) are not. The settings:

- ``model`` (default): the bundled organ model gives all ten classes;
- ``input_seg``: a DICOM SEG in the input that references the venous series
  (:func:`choose_seg`, :func:`read_seg_organs`);
- ``nifti``: a TotalSegmentator output, a folder with one NIfTI per structure or its multi-label
  file (:func:`read_nifti_organs`), at ``organ_nifti_path`` or ``$PDAC_LN_ORGAN_NIFTI``.

**The mapping** (:data:`STRUCTURE_MAPPING`, the one place it is written) says how a structure of
the source is recognised as a class of :data:`lnmet.labels.ORGAN_CLASSES`: a SEG segment by its
Segmented Property Type code (SNOMED CT; legacy ``SRT`` codes are matched through pydicom's SNOMED
mapping), else by its Segment Label; a NIfTI file by its name (``pancreas.nii.gz``); a value of a
multi-label NIfTI by the label table TotalSegmentator writes into the file's header extension, else
by the TotalSegmentator v2 ``total`` values (spleen 1, stomach 6, pancreas 7, esophagus 15,
duodenum 19, aorta 52). Several structures of one class (e.g. coeliac trunk and splenic artery) are
united. Structures of the source that map to no class (liver, kidneys...) are ignored.

**Which classes the source gives**: those it has a segment, a file or a label-table entry for, even
when that structure is empty (the source looked and found none: the model does not overrule it).
Where two classes of the source overlap, the later one in ``ORGAN_CLASSES`` order wins.

**Merge rule** (:func:`merge_labels`): the source's labels are kept as they are; the classes the
source lacks come from the bundled model, and only in voxels the source leaves unlabelled. The
model's labels of classes the source gives are discarded. When the source gives all ten classes the
model is not run.

**Refusals** (:class:`OrganSourceError`, never a silent fall back to the model): no SEG in the input;
no SEG that references the venous series; a SEG on another frame of reference than the venous
series; a source without a (non-empty) pancreas; a NIfTI not on the venous series' voxel grid (a
NIfTI has no frame of reference: the voxel grid, up to axis order and direction, stands in for it);
a path that is neither a NIfTI file nor a folder holding them.

Geometry: a SEG is read as a volume with highdicom and resampled (nearest neighbour) onto the
reference grid, so a SEG on the venous grid itself is copied exactly.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.sr.coding import Code

from lnmet.config import ORGAN_NIFTI_ENV, Settings
from lnmet.labels import ORGAN_BY_KEY, ORGAN_CLASSES
from lnmet.types import OrganSources, PhaseVolume, SiteOrgans

log = logging.getLogger(__name__)

SEGMENTATION_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
                            "1.2.840.10008.5.1.4.1.1.66.7")  # Label Map Segmentation Storage
NIFTI_SUFFIXES = (".nii.gz", ".nii")
GRID_TOL_VOXELS = 0.05  # a NIfTI voxel centre this close (in voxels) to a venous voxel centre is the same
MERGE_RULE = ("the site's labels are kept as they are; classes the site's source lacks come from the bundled "
              "organ model, only in voxels the source leaves unlabelled")
RIGHT = Code("24028007", "SCT", "Right")


class OrganSourceError(ValueError):
    """The site's organ segmentation cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class StructureMapping:
    """How one class of ``lnmet.labels.ORGAN_CLASSES`` is recognised in a site's segmentation."""

    key: str
    codes: tuple[str, ...]  # SNOMED CT values of the Segmented Property Type
    names: tuple[str, ...]  # segment labels / structure names (compared after :func:`normalise_name`)
    totalseg_v2: int | None = None  # value in TotalSegmentator v2 `total` multi-label output
    excluded_modifiers: tuple[Code, ...] = ()  # property type modifiers that make it another structure


STRUCTURE_MAPPING: tuple[StructureMapping, ...] = (
    StructureMapping("spleen", ("78961009",), ("spleen",), 1),
    StructureMapping("esophagus", ("32849002",), ("esophagus", "oesophagus"), 15),
    StructureMapping("stomach", ("69695003",), ("stomach",), 6),
    StructureMapping("aorta", ("15825003", "7832008"), ("aorta", "abdominal aorta"), 52),
    StructureMapping("pancreas", ("15776009",), ("pancreas",), 7),
    StructureMapping("duodenum", ("38848004",), ("duodenum",), 19),
    StructureMapping("sma", ("42258001",), ("superior mesenteric artery", "sma")),
    StructureMapping("tc_sa", ("57850000", "22083002"),
                     ("truncus coeliacus", "celiac trunk", "coeliac trunk", "celiac artery", "celiac axis",
                      "splenic artery", "truncus coeliacus & splenic artery", "tc sa")),
    StructureMapping("lga", ("23771002",), ("left gastric artery", "lga"), excluded_modifiers=(RIGHT,)),
    StructureMapping("cha_pha", ("76015000", "66559000", "18112008"),
                     ("hepatic artery", "common hepatic artery", "proper hepatic artery",
                      "common & proper hepatic artery", "cha pha")),
)
MAPPING_BY_KEY = {m.key: m for m in STRUCTURE_MAPPING}
assert [m.key for m in STRUCTURE_MAPPING] == [c.key for c in ORGAN_CLASSES]


def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-``/runs of spaces as one space: ``Superior_Mesenteric-Artery`` ->
    ``superior mesenteric artery``."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


_NAME_TO_KEY: dict[str, str] = {}
for _m in STRUCTURE_MAPPING:
    for _n in (*_m.names, ORGAN_BY_KEY[_m.key].name, _m.key):
        _NAME_TO_KEY.setdefault(normalise_name(_n), _m.key)


def class_for_name(name: str) -> str | None:
    """The class key a segment label or structure/file name stands for, else None."""
    return _NAME_TO_KEY.get(normalise_name(name))


def class_for_code(code: Code, modifiers: Sequence[Code] = ()) -> str | None:
    """The class key of a Segmented Property Type code (SCT, or legacy SRT), else None."""
    for m in STRUCTURE_MAPPING:
        if any(code == Code(v, "SCT", "") for v in m.codes):
            if any(mod == ex for mod in modifiers for ex in m.excluded_modifiers):
                return None
            return m.key
    return None


def _code(item) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), "")


# ---------------------------------------------------------------------------------------------
# Label maps
# ---------------------------------------------------------------------------------------------


def compose_labels(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """One uint8 organ label array from boolean masks per class key (later classes of
    ``ORGAN_CLASSES`` win where masks overlap)."""
    out = np.zeros(shape, dtype=np.uint8)
    for c in ORGAN_CLASSES:
        if c.key in masks:
            out[masks[c.key]] = c.label
    return out


def merge_labels(site: np.ndarray, model: np.ndarray | None, site_classes: Iterable[str]) -> np.ndarray:
    """The merge rule (:data:`MERGE_RULE`): ``site`` kept; ``model`` labels of classes not in
    ``site_classes`` written where ``site`` is 0; the model's labels of the site's classes dropped."""
    out = np.array(site, dtype=np.uint8, copy=True)
    if model is None:
        return out
    if model.shape != out.shape:
        raise ValueError(f"merge_labels: site labels {out.shape} and model labels {model.shape} differ in shape")
    given = [ORGAN_BY_KEY[k].label for k in site_classes]
    fill = (out == 0) & (model > 0) & ~np.isin(model, given)
    out[fill] = model[fill]
    return out


def organ_sources(setting: str, site: SiteOrgans | None, model_detail: str) -> OrganSources:
    """Which source gave each class (``model_detail`` names the model, e.g. ``organ_seg 0.1.0``)."""
    per_class, detail = {}, {}
    for c in ORGAN_CLASSES:
        if site is not None and c.key in site.classes:
            per_class[c.key], detail[c.key] = site.source, site.classes[c.key]
        else:
            per_class[c.key], detail[c.key] = "model", model_detail
    return OrganSources(setting=setting, description=site.description if site else "", per_class=per_class,
                        detail=detail, merge_rule=MERGE_RULE if site is not None else "")


def _resample_mask(mask: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A mask on any grid, nearest neighbour onto ``reference``: ``[z, y, x]`` bool."""
    out = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(out) > 0


def _check_pancreas(masks: dict[str, np.ndarray], what: str, found: Iterable[str]) -> None:
    if "pancreas" not in masks:
        listed = ", ".join(found) or "none"
        raise OrganSourceError(
            f"{what} lacks the pancreas (structures found: {listed}); the attention map needs it. "
            "Use a segmentation with the pancreas, or organ_source: model")
    if not masks["pancreas"].any():
        raise OrganSourceError(f"{what}: the pancreas is empty on the venous series' grid; the attention map "
                               "needs it. Use a segmentation with the pancreas, or organ_source: model")


# ---------------------------------------------------------------------------------------------
# DICOM SEG in the input
# ---------------------------------------------------------------------------------------------


def is_seg(header) -> bool:
    """A :class:`lnmet.dicom_io.InstanceHeader` of a DICOM Segmentation."""
    return header.sop_class_uid in SEGMENTATION_SOP_CLASSES or header.modality == "SEG"


def referenced_series(ds) -> set[str]:
    """Series Instance UIDs a SEG header references (Referenced Series Sequence)."""
    return {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) or []
            if "SeriesInstanceUID" in item}


def referenced_instances(ds) -> set[str]:
    """SOP Instance UIDs a SEG header references (Referenced Series, Source Image and per-frame
    Derivation Image sequences)."""
    out: set[str] = set()
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        out.update(str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedInstanceSequence", []) or [])
    out.update(str(i.ReferencedSOPInstanceUID) for i in ds.get("SourceImageSequence", []) or [])
    groups = list(ds.get("PerFrameFunctionalGroupsSequence", []) or []) + list(
        ds.get("SharedFunctionalGroupsSequence", []) or [])
    for g in groups:
        for der in g.get("DerivationImageSequence", []) or []:
            out.update(str(i.ReferencedSOPInstanceUID) for i in der.get("SourceImageSequence", []) or [])
    return out


def classify_segments(ds) -> dict[int, tuple[str, str]]:
    """Segment number -> (class key, how it was recognised) for the segments of a SEG header that
    :data:`STRUCTURE_MAPPING` knows: by Segmented Property Type code first, else by label."""
    out: dict[int, tuple[str, str]] = {}
    for item in ds.get("SegmentSequence", []) or []:
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "") or "")
        key, how = None, ""
        types = item.get("SegmentedPropertyTypeCodeSequence", []) or []
        if types:
            code = _code(types[0])
            modifiers = [_code(m) for m in types[0].get("SegmentedPropertyTypeModifierCodeSequence", []) or []]
            key = class_for_code(code, modifiers)
            how = f"segment {number} '{label}' (code {code.scheme_designator} {code.value})"
        if key is None and label:
            key = class_for_name(label)
            how = f"segment {number} '{label}' (by its label)"
        if key is not None:
            out[number] = (key, how)
    return out


def _seg_label(h) -> str:
    number = h.get("SeriesNumber", None)
    desc = str(h.get("SeriesDescription", "") or "<no description>")
    return f"DICOM SEG series {number if number not in (None, '') else '?'} '{desc}' (SOP Instance UID {h.sop_instance_uid})"


def _seg_time_key(h) -> tuple:
    return (str(h.get("ContentDate", "") or h.get("SeriesDate", "") or ""),
            str(h.get("ContentTime", "") or h.get("SeriesTime", "") or ""),
            int(h.get("SeriesNumber", 0) or 0), h.sop_instance_uid)


def choose_seg(series: Sequence, venous: PhaseVolume):
    """The SEG instance (a :class:`lnmet.dicom_io.InstanceHeader`) of the input to read the organs
    from: it references the venous series, lies on its frame of reference and has a pancreas
    segment; the most recent (content date/time, then series number) when several do. Raises
    :class:`OrganSourceError` saying which condition no SEG met."""
    venous_uid = venous.series.series_instance_uid
    venous_sops = set(venous.sop_instance_uids)
    segs = [h for s in series for h in s.instances if is_seg(h)]
    if not segs:
        raise OrganSourceError(
            "organ_source is input_seg but the input holds no DICOM SEG; add the SEG of the venous series "
            f"(series {venous_uid}) to the input, or set organ_source: model")
    referencing = [h for h in segs if venous_uid in referenced_series(h.dataset)
                   or referenced_instances(h.dataset) & venous_sops]
    if not referencing:
        found = "; ".join(f"{_seg_label(h)} references series "
                          f"{', '.join(sorted(referenced_series(h.dataset))) or '<none>'}" for h in segs)
        raise OrganSourceError(
            f"organ_source is input_seg but no DICOM SEG in the input references the venous series {venous_uid} "
            f"('{venous.series.series_description}'): {found}")
    venous_for = venous.frame_of_reference_uid
    same_frame = [h for h in referencing if not venous_for
                  or str(h.get("FrameOfReferenceUID", "") or "") == venous_for]
    if not same_frame:
        found = "; ".join(f"{_seg_label(h)} on frame of reference {h.get('FrameOfReferenceUID', '<none>')}"
                          for h in referencing)
        raise OrganSourceError(
            f"the DICOM SEG referencing the venous series lies on another frame of reference than the venous "
            f"series ({venous_for}): {found}; its segments cannot be placed on the venous images")
    with_pancreas = [h for h in same_frame if "pancreas" in {k for k, _ in classify_segments(h.dataset).values()}]
    if not with_pancreas:
        found = "; ".join(f"{_seg_label(h)} with segments "
                          + (", ".join(f"'{i.get('SegmentLabel', '')}'" for i in h.dataset.get('SegmentSequence', [])
                                       or []) or "<none>") for h in same_frame)
        raise OrganSourceError(
            f"the DICOM SEG of the venous series lacks the pancreas (no segment coded Pancreas, SCT 15776009, or "
            f"labelled 'pancreas'): {found}. The attention map needs the pancreas; use a SEG with it, or "
            "organ_source: model")
    chosen = max(with_pancreas, key=_seg_time_key)
    if not venous_for:
        log.warning("venous series has no Frame of Reference UID: the SEG's frame of reference cannot be checked")
    for h in with_pancreas:
        if h is not chosen:
            log.info("organ source: %s not used (an equally suitable, more recent SEG was chosen)", _seg_label(h))
    log.info("organ source: %s", _seg_label(chosen))
    return chosen


def volume_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A ``[slice, row, column]`` array with a highdicom-style affine (array indices in that order ->
    frame-of-reference mm, LPS) as a SimpleITK image (index order column, row, slice)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    vectors = [axes[:, 2], axes[:, 1], axes[:, 0]]  # sitk x = column, y = row, z = slice
    spacing = [float(np.linalg.norm(v)) for v in vectors]
    direction = np.column_stack([v / s for v, s in zip(vectors, spacing)])
    img.SetSpacing(spacing)
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin([float(v) for v in np.asarray(affine)[:3, 3]])
    return img


def read_seg_organs(header, reference: sitk.Image) -> SiteOrgans:
    """The organ classes of a SEG (chosen by :func:`choose_seg`) on the reference grid."""
    import highdicom as hd

    what = _seg_label(header)
    try:
        seg = hd.seg.segread(header.path)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise OrganSourceError(f"{what} ({header.path}) cannot be read as a DICOM SEG: {exc}") from exc
    recognised = classify_segments(seg)
    by_class: dict[str, list[int]] = {}
    for number, (key, _) in sorted(recognised.items()):
        by_class.setdefault(key, []).append(number)
    masks: dict[str, np.ndarray] = {}
    for key, numbers in by_class.items():
        try:
            vol = seg.get_volume(segment_numbers=numbers, combine_segments=False)
        except Exception as exc:  # noqa: BLE001 - re-raised naming the file
            raise OrganSourceError(f"{what}: segments {numbers} do not form a regular 3D volume: {exc}") from exc
        arr = np.asarray(vol.array)
        mask = (arr >= 0.5).any(axis=-1) if arr.ndim == 4 else arr >= 0.5
        masks[key] = _resample_mask(volume_to_sitk(mask.astype(np.uint8), vol.affine), reference)
    _check_pancreas(masks, what, [recognised[n][1] for n in sorted(recognised)])
    classes = {key: "; ".join(recognised[n][1] for n in numbers) for key, numbers in by_class.items()}
    ignored = [f"'{s.SegmentLabel}'" for s in seg.SegmentSequence if int(s.SegmentNumber) not in recognised]
    if ignored:
        log.info("organ source: %d segment(s) of the SEG are not organ classes of the attention map and are "
                 "ignored: %s", len(ignored), ", ".join(ignored[:20]))
    labels = sitk.GetImageFromArray(compose_labels(masks, reference.GetSize()[::-1]))
    labels.CopyInformation(reference)
    return SiteOrgans(source="input_seg", description=f"{what}, Series Instance UID {seg.SeriesInstanceUID}",
                      labels=labels, classes=classes)


# ---------------------------------------------------------------------------------------------
# TotalSegmentator NIfTI output
# ---------------------------------------------------------------------------------------------


def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass
class NiftiSource:
    """What a TotalSegmentator output path holds: per-structure files or one multi-label file."""

    path: Path
    structure_files: dict[str, list[Path]]  # class key -> files (per-structure layout)
    multilabel: Path | None  # the multi-label file (when there are no per-structure files)


def locate_nifti(path: str | Path) -> NiftiSource:
    """Find the NIfTI files of a TotalSegmentator output (no pixels read). Raises
    :class:`OrganSourceError` when the path holds none it can use."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        if _nifti_stem(p) is None:
            raise OrganSourceError(f"TotalSegmentator output {p} ({ORGAN_NIFTI_ENV} / organ_nifti_path) is not a "
                                   "NIfTI file (.nii or .nii.gz)")
        return NiftiSource(path=p, structure_files={}, multilabel=p)
    if not p.is_dir():
        raise OrganSourceError(f"TotalSegmentator output {p} ({ORGAN_NIFTI_ENV} / organ_nifti_path) not found")
    files = sorted(f for f in p.iterdir() if f.is_file() and _nifti_stem(f) is not None)
    per_structure: dict[str, list[Path]] = {}
    for f in files:
        key = class_for_name(_nifti_stem(f) or "")
        if key is not None:
            per_structure.setdefault(key, []).append(f)
    if per_structure:
        return NiftiSource(path=p, structure_files=per_structure, multilabel=None)
    if len(files) == 1:
        return NiftiSource(path=p, structure_files={}, multilabel=files[0])
    raise OrganSourceError(
        f"TotalSegmentator output folder {p} holds {len(files)} NIfTI file(s) and none named after a structure of "
        "the attention map (e.g. pancreas.nii.gz, as TotalSegmentator writes without --ml); expected one NIfTI "
        "per structure or a single multi-label file")


def label_table(path: Path) -> dict[int, str]:
    """The label table TotalSegmentator writes into a multi-label NIfTI's header extension
    (value -> structure name); empty when the file has none."""
    import nibabel as nib

    table: dict[int, str] = {}
    for ext in nib.load(str(path)).header.extensions:
        try:
            root = ET.fromstring(ext.get_content().decode("utf-8", "replace").strip())
        except ET.ParseError:
            continue
        for label in root.iter("Label"):
            try:
                table[int(label.get("Key", ""))] = (label.text or "").strip()
            except ValueError:
                continue
    return table


def same_voxel_grid(image: sitk.Image, reference: sitk.Image, tol: float = GRID_TOL_VOXELS) -> bool:
    """True when ``image`` has the voxel centres of ``reference``, in any axis order and direction
    (as a NIfTI converted from the venous series has, e.g. by TotalSegmentator's dicom2nifti)."""
    if int(np.prod(image.GetSize())) != int(np.prod(reference.GetSize())):
        return False
    if not np.allclose(sorted(image.GetSpacing()), sorted(reference.GetSpacing()), rtol=1e-3):
        return False
    size = np.array(image.GetSize())
    for corner in product(*[(0, n - 1) for n in reference.GetSize()]):
        point = reference.TransformIndexToPhysicalPoint([int(v) for v in corner])
        idx = np.array(image.TransformPhysicalPointToContinuousIndex(point))
        if np.any(np.abs(idx - np.round(idx)) > tol) or np.any(idx < -tol) or np.any(idx > size - 1 + tol):
            return False
    return True


def _read_on_reference(path: Path, reference: sitk.Image) -> np.ndarray:
    """A NIfTI label image on the reference grid (integer ``[z, y, x]``); refused unless it lies on
    the venous series' voxel grid."""
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise OrganSourceError(f"TotalSegmentator output {path} cannot be read as NIfTI: {exc}") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise OrganSourceError(f"TotalSegmentator output {path}: expected a 3D label image, got "
                               f"{img.GetDimension()}D with {img.GetNumberOfComponentsPerPixel()} component(s)")
    if not same_voxel_grid(img, reference):
        raise OrganSourceError(
            f"TotalSegmentator output {path} does not lie on the venous series' voxel grid (NIfTI size "
            f"{img.GetSize()}, spacing {tuple(round(s, 3) for s in img.GetSpacing())}, origin "
            f"{tuple(round(o, 2) for o in img.GetOrigin())}; venous size {reference.GetSize()}, spacing "
            f"{tuple(round(s, 3) for s in reference.GetSpacing())}, origin "
            f"{tuple(round(o, 2) for o in reference.GetOrigin())}): run TotalSegmentator on the venous series")
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        img = sitk.Cast(sitk.Round(img), sitk.sitkInt32)
    out = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return sitk.GetArrayFromImage(out)


def read_nifti_organs(path: str | Path, reference: sitk.Image) -> SiteOrgans:
    """The organ classes of a TotalSegmentator output on the reference grid (see the module docstring)."""
    src = locate_nifti(path)
    masks: dict[str, np.ndarray] = {}
    classes: dict[str, str] = {}
    if src.multilabel is None:
        for key, files in src.structure_files.items():
            masks[key] = np.zeros(reference.GetSize()[::-1], dtype=bool)
            for f in files:
                masks[key] |= _read_on_reference(f, reference) > 0
            classes[key] = ", ".join(f.name for f in files)
        found = [f.name for files in src.structure_files.values() for f in files]
        description = f"TotalSegmentator output folder {src.path} (one NIfTI per structure)"
    else:
        values = _read_on_reference(src.multilabel, reference)
        table = label_table(src.multilabel)  # value -> structure name
        how = "label table in the file"
        if not table:
            table = {m.totalseg_v2: m.key for m in STRUCTURE_MAPPING if m.totalseg_v2 is not None}
            how = "TotalSegmentator v2 'total' label values"
        for value, name in sorted(table.items()):
            key = class_for_name(name)
            if key is None:
                continue
            masks[key] = masks.get(key, np.zeros(values.shape, dtype=bool)) | (values == value)
            classes[key] = (classes[key] + ", " if key in classes else "") + (
                f"label {value} '{name}' of {src.multilabel.name}")
        found = [f"{v} '{n}'" for v, n in sorted(table.items())][:30]
        description = f"TotalSegmentator multi-label NIfTI {src.multilabel} ({how})"
    _check_pancreas(masks, f"TotalSegmentator output {src.path}", found)
    labels = sitk.GetImageFromArray(compose_labels(masks, reference.GetSize()[::-1]))
    labels.CopyInformation(reference)
    return SiteOrgans(source="nifti", description=description, labels=labels, classes=classes)


# ---------------------------------------------------------------------------------------------
# Entry point of the organ source operator
# ---------------------------------------------------------------------------------------------


def load_site_organs(settings: Settings, series: Sequence, venous: PhaseVolume) -> SiteOrgans | None:
    """The site's organ labels on the venous reference grid as app.yaml ``organ_source`` says
    (None for ``model``). Raises :class:`OrganSourceError` when the source cannot be used."""
    if settings.organ_source == "model":
        return None
    if settings.organ_source == "input_seg":
        site = read_seg_organs(choose_seg(series, venous), venous.image)
    elif settings.organ_source == "nifti":
        site = read_nifti_organs(settings.organ_nifti_path or "", venous.image)
    else:  # config validation makes this unreachable
        raise OrganSourceError(f"unknown organ_source {settings.organ_source!r}")
    counts = np.bincount(sitk.GetArrayViewFromImage(site.labels).ravel(), minlength=len(ORGAN_CLASSES) + 1)
    log.info("organ source %s: %s; classes %s", site.source, site.description,
             ", ".join(f"{k} ({int(counts[ORGAN_BY_KEY[k].label])} voxels)" for k in site.classes))
    missing = [c.key for c in ORGAN_CLASSES if c.key not in site.classes]
    if missing:
        log.info("organ source: classes %s come from the bundled organ model (%s)", ", ".join(missing), MERGE_RULE)
    return site


# ---------------------------------------------------------------------------------------------
# Wording for the SR and the PDF
# ---------------------------------------------------------------------------------------------

SOURCE_WORDS = {"model": "bundled organ model", "input_seg": "site's DICOM SEG",
                "nifti": "site's TotalSegmentator NIfTI"}


def source_summary(sources: OrganSources) -> str:
    """One sentence: the setting, what was read and the merge rule."""
    if sources.setting == "model":
        return "Organs/vessels: all classes from the bundled organ model (organ_source: model)."
    return (f"Organs/vessels (organ_source: {sources.setting}): {sources.description}. Merge: {sources.merge_rule}.")


def class_source_lines(sources: OrganSources) -> list[tuple[str, str, str]]:
    """(class name, source in words, detail) per class of ``ORGAN_CLASSES``."""
    return [(c.name, SOURCE_WORDS.get(sources.per_class.get(c.key, ""), sources.per_class.get(c.key, "")),
             sources.detail.get(c.key, "")) for c in ORGAN_CLASSES]
