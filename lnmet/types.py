"""Typed objects that flow between the operators of the graph.

Volumes are ``SimpleITK.Image`` objects: they carry spacing, origin and direction in the DICOM
patient (LPS) frame, so geometry never travels separately from pixels. Arrays taken from them are
indexed ``[z, y, x]`` (SimpleITK's ``GetArrayFromImage`` order).

Grids:
- the *reference grid* is the venous series' own grid; every DICOM output lies on it;
- the *working grid* has the reference grid's origin and direction and the models' spacing; the
  networks run on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from lnmet.held_out import HeldOutEvidence


@dataclass
class SeriesRef:
    """A chosen series, as reported in the logs and results (no patient identifiers)."""

    phase: str  # "arterial" | "venous"
    study_instance_uid: str
    series_instance_uid: str
    series_description: str
    series_number: int | None
    modality: str
    acquisition_time: str | None  # DICOM TM, as in the header (AcquisitionTime, else SeriesTime)
    num_slices: int
    reason: str  # why this series was chosen (rule matched / timing fallback)
    # Identifiers the files lacked and the loader completed (lnmet.dicom_io.DerivedAttribute.as_dict):
    # attribute, source, value (None when per instance), instances. Reported in every output.
    derived_attributes: list[dict[str, Any]] = field(default_factory=list)
    # What the images show (lnmet.phase_content.VesselMeasure.as_dict), measured at intake; None if not measured.
    content: dict[str, Any] | None = None


@dataclass
class PhaseVolume:
    """One phase as a volume, with the source instances it was built from."""

    phase: str
    image: sitk.Image  # float32 HU on the series' own grid
    series: SeriesRef
    source_files: list[str]  # file paths, in slice order along the slice normal
    sop_instance_uids: list[str]  # same order as source_files
    sop_class_uid: str
    frame_of_reference_uid: str
    notes: list[str] = field(default_factory=list)  # e.g. duplicate slices resolved
    selection_log: list[str] = field(default_factory=list)  # phase selection: every candidate and why
    # The source instances' headers (no pixel data) in source_files order, with the identifiers the
    # loader completed (SeriesRef.derived_attributes): what the SEG/SR/PDF reference. Empty when the
    # volume was not built by the loader; the output builders then read the files.
    source_headers: list[Any] = field(default_factory=list, repr=False)


@dataclass
class PhaseSelection:
    """Output of phase selection: the venous phase and, unless single-phase, the arterial one."""

    venous: Any  # the loader's series object for the venous phase
    arterial: Any | None
    venous_ref: SeriesRef
    arterial_ref: SeriesRef | None
    single_phase: bool
    log: list[str] = field(default_factory=list)  # every candidate considered and why kept/refused


@dataclass
class RegisteredPhases:
    """Both phases aligned to the venous phase and resampled onto the working grid."""

    venous: PhaseVolume  # reference phase on its own grid (the reference grid)
    arterial: PhaseVolume | None  # arterial phase on its own grid, as loaded (None when single-phase)
    working_venous: sitk.Image  # float32 HU, working grid
    working_arterial: sitk.Image | None  # float32 HU, registered, working grid (None when single-phase)
    transform: sitk.Transform | None  # maps venous (fixed) physical points to arterial (moving) points
    single_phase: bool
    registration_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def reference(self) -> sitk.Image:
        return self.venous.image


@dataclass
class LymphNodeFinding:
    """One segmented lymph node with its measurements and class (paper section 3.1.2)."""

    index: int  # 1..N; the value of this node in the LN instance map (reference grid)
    tracking_uid: str  # DICOM UID used as the SR tracking identifier
    volume_mm3: float
    short_axis_mm: float  # axial plane, as a radiologist measures
    long_axis_mm: float
    mean_hu_venous: float
    centroid_mm: tuple[float, float, float]  # LPS
    nearest_structure: str  # key of lnmet.labels.ORGAN_CLASSES
    distance_mm: float  # from the node's boundary to the nearest structure (0 if touching)
    probability_positive: float
    positive: bool


@dataclass
class TumourFinding:
    """The PDAC segmentation result; ``found`` False when the model found no tumour."""

    found: bool
    volume_mm3: float = 0.0
    max_axial_diameter_mm: float = 0.0
    centroid_mm: tuple[float, float, float] | None = None
    mean_hu_venous: float | None = None
    statement: str = ""
    # How it was chosen among the PDAC model's connected components (None: not known, e.g. a mask from elsewhere)
    model_components: int | None = None
    selection_rule: str | None = None  # a TumourSelection.rule


@dataclass(frozen=True)
class TumourSelection:
    """How the primary tumour was chosen among the connected components of the PDAC model's mask
    (:func:`lnmet.tumour.primary_tumour`); ``rule`` is one of :data:`lnmet.tumour.RULES`."""

    components: int
    rule: str
    reach_mm: float


@dataclass
class PatientPrediction:
    """Patient-level LN metastasis prediction (paper section 3.2)."""

    probability: float | None
    threshold: float
    positive: bool | None
    method: str  # "combined" | "tumour_only" | "nodes_only"
    largest_positive_ln_volume_mm3: float
    statement: str = ""
    borderline_margin: float = 0.0  # app.yaml patient_classifier.borderline_margin

    @property
    def borderline(self) -> bool:
        """The probability lies closer to the threshold than the margin: the decision could go either way."""
        return (self.probability is not None and self.borderline_margin > 0
                and abs(float(self.probability) - float(self.threshold)) < self.borderline_margin)


@dataclass
class ModelInfo:
    """A model file as verified against the manifest."""

    name: str
    version: str
    file: str
    sha256: str
    trained_on: str
    metadata: dict[str, Any] = field(default_factory=dict)
    held_out: HeldOutEvidence | None = None  # figures on unseen generated studies, from the manifest


@dataclass
class LNFindings:
    """Output of LN identification for the patient classifier: the LN instance map and the nodes
    (reference grid), the organ label map they were measured against, and the model used."""

    ln_instances: sitk.Image  # uint16, reference grid; values = LymphNodeFinding.index
    lymph_nodes: list[LymphNodeFinding]
    organs: sitk.Image  # uint8 labels 1-10, reference grid
    threshold: float  # probability threshold that made a node positive
    model: ModelInfo | None = None  # the LN identification model

    @property
    def largest_positive_volume_mm3(self) -> float:
        """Volume of the largest positive LN (paper section 3.2); 0 when none is positive."""
        return max((n.volume_mm3 for n in self.lymph_nodes if n.positive), default=0.0)


@dataclass
class SiteOrgans:
    """Organ/vessel labels the site already had (app.yaml ``organ_source`` ``input_seg`` or ``nifti``),
    read and checked by :mod:`lnmet.organ_sources`, on the reference grid."""

    source: str  # "input_seg" | "nifti"
    description: str  # what was read: the SEG series, or the NIfTI file/folder (no patient identifiers)
    labels: sitk.Image  # uint8, values of lnmet.labels.ORGAN_CLASSES, reference grid
    classes: dict[str, str]  # class key -> where it came from in the source (segment, file, label value)


@dataclass
class OrganSources:
    """Which source gave each organ/vessel class of the organ label map (reported in every output)."""

    setting: str  # app.yaml organ_source: "model" | "input_seg" | "nifti"
    description: str  # the site source read ("" for the model alone)
    per_class: dict[str, str]  # class key -> "model" | "input_seg" | "nifti", every class of ORGAN_CLASSES
    detail: dict[str, str] = field(default_factory=dict)  # class key -> segment / file / model name and version
    merge_rule: str = ""  # how site and model labels were combined, in words
