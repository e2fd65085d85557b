"""SEGBuilderOperator: the DICOM Segmentation of one analysed study, built in memory.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    out ``seg_dataset`` (:class:`highdicom.seg.Segmentation`, a pydicom Dataset; None when disabled)

The SEG lies on the venous reference series (one frame per source slice that holds the segment,
empty frames omitted) and has BINARY segments in this order: the 10 organ/vessel classes of
:data:`lnmet.labels.ORGAN_CLASSES`, the PDAC tumour, then one segment per lymph node by decreasing
probability of metastasis (its label says metastatic or not). Organ and tumour segments with no voxel
are left out (DICOM segment numbers stay 1..N, consecutive); results.json lists them under
``outputs.seg.omitted_segments``. Each segment carries a Tracking ID naming what it is
(``organ:spleen``, ``pdac``, ``ln:<index>``) and a Tracking UID; a node's Tracking UID is the node's
own (the SR's tracking UID for that node), so the SR and the SEG name one finding with one UID. See
docs/OUTPUTS.md for the codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lnmet.labels import ORGAN_CLASSES
from lnmet.reporting import codes, dicom_common, style
from lnmet.results import AnalysisResults, AnalysisResultsError
from lnmet.types import LymphNodeFinding

logger = logging.getLogger(__name__)

PDAC_KEY = "pdac"
# Segments every SEG may have (left out when empty); lymph node segments come on top, one per node.
FIXED_SEGMENT_KEYS: tuple[str, ...] = tuple(f"organ:{c.key}" for c in ORGAN_CLASSES) + (PDAC_KEY,)


def ln_segment_key(node: LymphNodeFinding) -> str:
    """Tracking ID of a lymph node's own segment (``ln:<index>``)."""
    return f"ln:{node.index}"


def ln_segment_label(node: LymphNodeFinding) -> str:
    """Segment label of a lymph node: its number and whether it was called metastatic."""
    return f"Lymph node {node.index}, {'metastatic' if node.positive else 'non-metastatic'} (predicted)"


def nodes_in_report_order(results: AnalysisResults) -> list[LymphNodeFinding]:
    """The nodes by decreasing probability of metastasis (index breaks ties): the order of the SEG's
    node segments, results.json and the PDF's node table."""
    return sorted(results.lymph_nodes, key=lambda n: (-n.probability_positive, n.index))


@dataclass
class _Segment:
    key: str
    label: str
    source: np.ndarray  # the label map that holds it [z, y, x] (a view, not a copy)
    value: int  # its voxels: source == value (0: source > 0, the tumour mask)
    box: tuple[slice, ...] | None  # where it lies in source; None: nowhere (an empty segment)
    category: hd.sr.CodedConcept
    prop_type: hd.sr.CodedConcept
    anatomic_regions: list | None
    rgb: tuple[int, int, int]
    modifier: hd.sr.CodedConcept | None = None
    tracking_uid: str | None = None  # None: a new UID

    def fill(self, out: np.ndarray, mark: int | bool = True) -> None:
        """Write ``mark`` into ``out`` (the source's shape) where the segment lies; nothing else is
        touched. Only the segment's box is read, so a node costs its own size, not the volume's."""
        if self.box is None:
            return
        region = self.source[self.box]
        inside = region > 0 if self.value == 0 else region == self.value
        out[self.box][inside] = mark


def _label_boxes(labels: np.ndarray, values: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """The bounding box of each of ``values`` in the label map (None for a value it lacks)."""
    present = [v for v in values if v > 0]
    if not present:
        return {v: None for v in values}
    found = ndimage.find_objects(labels, max_label=max(present))
    return {v: (found[v - 1] if v > 0 else None) for v in values}


def _segments(results: AnalysisResults) -> list[_Segment]:
    """Every segment the SEG may hold, in SEG order; the empty ones have no box."""
    organs = sitk.GetArrayViewFromImage(results.organs)
    pdac = sitk.GetArrayViewFromImage(results.pdac_mask)
    lns = sitk.GetArrayViewFromImage(results.ln_instances)
    organ_boxes = _label_boxes(organs, [c.label for c in ORGAN_CLASSES])
    nodes = nodes_in_report_order(results)
    node_boxes = _label_boxes(lns, [n.index for n in nodes])
    pdac_box = ndimage.find_objects((pdac > 0).view(np.uint8))
    out = []
    for c in ORGAN_CLASSES:
        out.append(_Segment(
            key=f"organ:{c.key}", label=c.name, source=organs, value=c.label, box=organ_boxes[c.label],
            category=hd.sr.CodedConcept.from_code(codes.ANATOMICAL_STRUCTURE),
            prop_type=codes.structure_concept(c.key), anatomic_regions=None,
            rgb=style.ORGAN_RGB[c.key], modifier=codes.structure_modifier(c.key)))
    out.append(_Segment(
        key=PDAC_KEY, label="PDAC (predicted)", source=pdac, value=0, box=pdac_box[0] if pdac_box else None,
        category=hd.sr.CodedConcept.from_code(codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
        prop_type=hd.sr.CodedConcept.from_code(codes.NEOPLASM),
        anatomic_regions=[codes.PANCREAS], rgb=style.PDAC_RGB))
    for node in nodes:
        if node.positive:  # "a secondary neoplasm located in a lymph node"
            category, prop, regions = (codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.NEOPLASM_SECONDARY,
                                       [codes.LYMPH_NODE])
        else:
            category, prop, regions = codes.ANATOMICAL_STRUCTURE, codes.LYMPH_NODE, None
        out.append(_Segment(
            key=ln_segment_key(node), label=ln_segment_label(node), source=lns, value=node.index,
            box=node_boxes[node.index],
            category=hd.sr.CodedConcept.from_code(category), prop_type=hd.sr.CodedConcept.from_code(prop),
            anatomic_regions=regions, rgb=style.LN_POSITIVE_RGB if node.positive else style.LN_NEGATIVE_RGB,
            tracking_uid=node.tracking_uid))
    return out


def segment_numbers(seg: Dataset) -> dict[str, int]:
    """Segment key (Tracking ID, e.g. ``organ:spleen``) -> segment number, read from a SEG."""
    return {str(item.TrackingID): int(item.SegmentNumber) for item in seg.SegmentSequence
            if "TrackingID" in item}


def segment_tracking_uids(seg: Dataset) -> dict[str, str]:
    """Segment key (Tracking ID) -> the segment's Tracking UID, read from a SEG."""
    return {str(item.TrackingID): str(item.TrackingUID) for item in seg.SegmentSequence
            if "TrackingID" in item and "TrackingUID" in item}


def omitted_segments(seg: Dataset) -> list[str]:
    """Keys of the organ and tumour segments left out of ``seg`` because they were empty (a lymph
    node always has voxels, so its segment is never left out)."""
    present = segment_numbers(seg)
    return [k for k in FIXED_SEGMENT_KEYS if k not in present]


def _any_overlap(segments: list[_Segment], shape: tuple[int, ...]) -> bool:
    """Whether two segments share a voxel. Segments of one label map never overlap each other, so
    the label maps' segment voxels are compared, one map at a time, with those of the maps before."""
    seen = np.zeros(shape, dtype=bool)
    for source in {id(s.source): s.source for s in segments}.values():
        mine = np.zeros(shape, dtype=bool)
        for s in segments:
            if s.source is source:
                s.fill(mine)
        if np.logical_and(seen, mine).any():
            return True
        seen |= mine
    return False


def build_seg(results: AnalysisResults) -> hd.seg.Segmentation:
    """Build the DICOM SEG of ``results`` on the venous source series (pure function)."""
    results.validate()
    headers = dicom_common.check_source_geometry(results)
    segments = [s for s in _segments(results) if s.box is not None]
    if not segments:
        raise AnalysisResultsError(
            f"venous series {results.venous.series.series_instance_uid}: every label map is empty "
            "(no organ, tumour or lymph node); there is nothing to put in a DICOM SEG")
    algorithm = dicom_common.algorithm_identification(results)
    descriptions = []
    for number, s in enumerate(segments, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.label[:64],
            segmented_property_category=s.category,
            segmented_property_type=s.prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=s.tracking_uid or generate_uid(),
            tracking_id=s.key,
            anatomic_regions=s.anatomic_regions,
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        ))
    shape = segments[0].source.shape
    overlap = _any_overlap(segments, shape)
    if overlap:
        # Some segments overlap (e.g. PDAC inside the pancreas): one binary plane per segment, filled
        # in place (no per-segment copy: a study with many nodes would hold each twice). Each
        # segment's planes contiguous in memory (segment axis first, moved last as a view):
        # highdicom reads a frame of one segment at a time (2.8 s instead of 4.9 s for the standard
        # study's SEG).
        planes = np.zeros((len(segments),) + shape, dtype=bool)
        for plane, s in zip(planes, segments):
            s.fill(plane)
        pixel_array = np.moveaxis(planes, 0, -1)
    else:
        pixel_array = np.zeros(shape, np.uint8 if len(segments) < 256 else np.uint16)
        for number, s in enumerate(segments, start=1):
            s.fill(pixel_array, number)
    synthetic = results.synthetic_training_data
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=dicom_common.SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=dicom_common.MANUFACTURER,
        manufacturer_model_name=results.run.app_name[:64],
        software_versions=dicom_common.software_versions(results),
        device_serial_number=results.run.app_version,
        content_label="LNMET_SEG",
        content_description=dicom_common.content_description(synthetic),
        content_creator_name="LNMET^AI",
        omit_empty_frames=True,
    )
    seg.SeriesDescription = dicom_common.series_description("SEG", synthetic)
    dicom_common.set_series_date_time(seg)
    # Post-coordinated modifiers (e.g. laterality "Left" of the gastric artery): highdicom has no
    # argument for them, so they are added to the Segmented Property Type Code Sequence item.
    for item, s in zip(seg.SegmentSequence, segments):
        if s.modifier is not None:
            item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [s.modifier]
    logger.info("SEG built: %d segments (%s), %d frames%s", len(segments),
                ", ".join(s.key for s in segments), int(seg.NumberOfFrames),
                "; overlapping segments stored as separate planes" if overlap else "")
    return seg


class SEGBuilderOperator(Operator):
    """Builds the DICOM SEG in memory (see the module docstring for ports and content)."""

    def __init__(self, fragment: Fragment, *args, enabled: bool = True, **kwargs) -> None:
        self.enabled = enabled
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("analysis_results")
        spec.output("seg_dataset")

    def compute(self, op_input, op_output, context) -> None:
        results: AnalysisResults = op_input.receive("analysis_results")
        op_output.emit(build_seg(results) if self.enabled else None, "seg_dataset")
