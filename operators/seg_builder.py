"""SEGBuilderOperator: the DICOM Segmentation of one analysed study, built in memory.

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`)
    out ``seg_dataset`` (:class:`highdicom.seg.Segmentation`, a pydicom Dataset; None when disabled)

The SEG lies on the venous reference series (one frame per source slice that holds the segment,
empty frames omitted) and has up to 13 BINARY segments, in this order: the 10 organ/vessel classes
of :data:`lnmet.labels.ORGAN_CLASSES`, the PDAC tumour, the metastatic (positive) lymph nodes and the
non-metastatic (negative) lymph nodes. Segments with no voxel are left out (DICOM segment numbers
stay 1..N, consecutive); results.json lists them under ``outputs.seg.omitted_segments``. Each
segment carries a Tracking ID naming what it is (``organ:spleen``, ``pdac``, ``ln:positive``,
``ln:negative``) which the SR builder uses to reference it. See docs/OUTPUTS.md for the codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lnmet.labels import ORGAN_CLASSES
from lnmet.reporting import codes, dicom_common, style
from lnmet.results import AnalysisResults, AnalysisResultsError

logger = logging.getLogger(__name__)

PDAC_KEY = "pdac"
LN_POSITIVE_KEY = "ln:positive"
LN_NEGATIVE_KEY = "ln:negative"
ALL_SEGMENT_KEYS: tuple[str, ...] = tuple(f"organ:{c.key}" for c in ORGAN_CLASSES) + (
    PDAC_KEY, LN_POSITIVE_KEY, LN_NEGATIVE_KEY)


@dataclass
class _Segment:
    key: str
    label: str
    mask: np.ndarray  # bool [z, y, x]
    category: hd.sr.CodedConcept
    prop_type: hd.sr.CodedConcept
    anatomic_regions: list | None
    rgb: tuple[int, int, int]
    modifier: hd.sr.CodedConcept | None = None


def _segments(results: AnalysisResults) -> list[_Segment]:
    organs = sitk.GetArrayViewFromImage(results.organs)
    pdac = sitk.GetArrayViewFromImage(results.pdac_mask)
    lns = sitk.GetArrayViewFromImage(results.ln_instances)
    out = []
    for c in ORGAN_CLASSES:
        out.append(_Segment(
            key=f"organ:{c.key}", label=c.name, mask=organs == c.label,
            category=hd.sr.CodedConcept.from_code(codes.ANATOMICAL_STRUCTURE),
            prop_type=codes.structure_concept(c.key), anatomic_regions=None,
            rgb=style.ORGAN_RGB[c.key], modifier=codes.structure_modifier(c.key)))
    out.append(_Segment(
        key=PDAC_KEY, label="PDAC (predicted)", mask=pdac > 0,
        category=hd.sr.CodedConcept.from_code(codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
        prop_type=hd.sr.CodedConcept.from_code(codes.NEOPLASM),
        anatomic_regions=[codes.PANCREAS], rgb=style.PDAC_RGB))
    pos = [n.index for n in results.positive_nodes]
    neg = [n.index for n in results.negative_nodes]
    out.append(_Segment(
        key=LN_POSITIVE_KEY, label="Lymph nodes, metastatic (predicted)", mask=np.isin(lns, pos),
        category=hd.sr.CodedConcept.from_code(codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
        prop_type=hd.sr.CodedConcept.from_code(codes.NEOPLASM_SECONDARY),
        anatomic_regions=[codes.LYMPH_NODE], rgb=style.LN_POSITIVE_RGB))
    out.append(_Segment(
        key=LN_NEGATIVE_KEY, label="Lymph nodes, non-metastatic (predicted)", mask=np.isin(lns, neg),
        category=hd.sr.CodedConcept.from_code(codes.ANATOMICAL_STRUCTURE),
        prop_type=hd.sr.CodedConcept.from_code(codes.LYMPH_NODE),
        anatomic_regions=None, rgb=style.LN_NEGATIVE_RGB))
    return out


def segment_numbers(seg: Dataset) -> dict[str, int]:
    """Segment key (Tracking ID, e.g. ``organ:spleen``) -> segment number, read from a SEG."""
    return {str(item.TrackingID): int(item.SegmentNumber) for item in seg.SegmentSequence
            if "TrackingID" in item}


def omitted_segments(seg: Dataset) -> list[str]:
    """Keys of the segments left out of ``seg`` because they were empty."""
    present = segment_numbers(seg)
    return [k for k in ALL_SEGMENT_KEYS if k not in present]


def build_seg(results: AnalysisResults) -> hd.seg.Segmentation:
    """Build the DICOM SEG of ``results`` on the venous source series (pure function)."""
    results.validate()
    headers = dicom_common.check_source_geometry(results)
    segments = [s for s in _segments(results) if s.mask.any()]
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
            tracking_uid=generate_uid(),
            tracking_id=s.key,
            anatomic_regions=s.anatomic_regions,
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        ))
    masks = [s.mask for s in segments]
    overlap = np.sum(masks, axis=0, dtype=np.uint8).max() > 1
    if overlap:
        # Some segments overlap (e.g. PDAC inside the pancreas): one binary plane per segment.
        pixel_array = np.stack(masks, axis=-1)
    else:
        pixel_array = np.zeros(masks[0].shape, np.uint8)
        for number, m in enumerate(masks, start=1):
            pixel_array[m] = number
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
