"""Everything the output builders need about one analysed study, in one object.

The last analysis operators hand an :class:`AnalysisResults` to the four output builders (SEG, SR,
PDF, results.json). It holds the label maps on the *reference grid* (the venous series' own grid,
the grid of every DICOM output), the findings, the patient-level prediction, the models used and
what happened during the run. :meth:`AnalysisResults.validate` checks that these pieces agree
(same grid, LN indices present in the LN instance map, ...) so that a builder never writes an
object that contradicts another one.

:class:`PdfDocument` is what the PDF builder hands to the publisher and to the results.json
builder: the PDF bytes and the same PDF as a DICOM Encapsulated PDF dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from lnmet.held_out import PATIENT_MODEL, patient_evidence_statement
from lnmet.labels import ORGAN_CLASSES
from lnmet.types import (
    LymphNodeFinding,
    ModelInfo,
    OrganSources,
    PatientPrediction,
    PhaseVolume,
    SeriesRef,
    TumourFinding,
)


class AnalysisResultsError(ValueError):
    """The analysis results are inconsistent; the message names the part and what was expected."""


@dataclass
class RunInfo:
    """What happened during the run, as reported in every output (no patient identifiers)."""

    app_name: str
    app_version: str
    single_phase: bool
    phase_selection_log: list[str] = field(default_factory=list)
    device: str = "cpu"
    timings_s: dict[str, float] = field(default_factory=dict)  # stage name -> wall seconds
    warnings: list[str] = field(default_factory=list)
    started_at: str | None = None  # ISO 8601, local time of the run start


@dataclass
class AnalysisResults:
    """The complete result of one study, as the output builders consume it.

    All label maps lie on the venous reference grid (``venous.image``):
    ``organs`` uint8 with values 1-10 of :data:`lnmet.labels.ORGAN_CLASSES`; ``pdac_mask`` uint8 0/1;
    ``ln_instances`` uint16 whose value is :attr:`LymphNodeFinding.index`.
    """

    venous: PhaseVolume
    arterial: SeriesRef | None
    organs: sitk.Image
    pdac_mask: sitk.Image
    tumour: TumourFinding
    ln_instances: sitk.Image
    lymph_nodes: list[LymphNodeFinding]
    patient: PatientPrediction
    models: list[ModelInfo]
    run: RunInfo
    # Probability at or above which a node is called metastatic (LN identification); None if unknown.
    ln_threshold: float | None = None
    # The quality gate's report (lnmet.quality.QualityReport); None when no gate ran (the builders
    # used alone). A study whose report is not assessable has no patient-level decision.
    quality: Any = None
    organ_sources: OrganSources | None = None  # which source gave each organ/vessel class (None: model, not said)
    _headers: list[Dataset] | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ derived views
    @property
    def reference(self) -> sitk.Image:
        """The reference grid (the venous image)."""
        return self.venous.image

    @property
    def synthetic_training_data(self) -> bool:
        """True when any model used was trained on synthetic data (then every output says so)."""
        return any(bool(m.metadata.get("synthetic_training_data", False)) for m in self.models)

    @property
    def patient_evidence(self) -> str | None:
        """How far the patient-level answer can be trusted, from the patient model's held-out figures
        (:func:`lnmet.held_out.patient_evidence_statement`); None when no answer was given or no
        patient model is listed."""
        model = next((m for m in self.models if m.name == PATIENT_MODEL), None)
        if model is None or self.patient.probability is None or self.status == "not_assessable":
            return None
        return patient_evidence_statement(self.patient.method, model.name, model.version, model.held_out)

    @property
    def status(self) -> str:
        """``assessed``, or ``not_assessable`` when a critical check of the quality gate failed."""
        return "not_assessable" if self.quality is not None and not self.quality.assessable else "assessed"

    @property
    def positive_nodes(self) -> list[LymphNodeFinding]:
        return [n for n in self.lymph_nodes if n.positive]

    @property
    def negative_nodes(self) -> list[LymphNodeFinding]:
        return [n for n in self.lymph_nodes if not n.positive]

    def source_headers(self) -> list[Dataset]:
        """The venous source instances' headers (no pixel data), in ``source_files`` order: the loader's
        headers, with the identifiers it completed, when the volume carries them; else read once."""
        if self._headers is None and len(self.venous.source_headers) == len(self.venous.source_files):
            self._headers = list(self.venous.source_headers)
        if self._headers is None:
            headers = []
            for path in self.venous.source_files:
                try:
                    headers.append(pydicom.dcmread(path, stop_before_pixels=True))
                except Exception as exc:  # noqa: BLE001 - re-raised with the file named
                    raise AnalysisResultsError(
                        f"cannot read venous source instance {path}: {exc}") from exc
            self._headers = headers
        return self._headers

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`AnalysisResultsError` naming the first inconsistency found."""
        ref = self.reference
        n_slices = ref.GetSize()[2]
        if len(self.venous.source_files) != n_slices or len(self.venous.sop_instance_uids) != n_slices:
            raise AnalysisResultsError(
                f"venous series {self.venous.series.series_instance_uid}: {n_slices} slices in the "
                f"volume but {len(self.venous.source_files)} source files and "
                f"{len(self.venous.sop_instance_uids)} SOP instance UIDs; expected one per slice")
        for name, img, pixel_ids in (
            ("organs", self.organs, (sitk.sitkUInt8,)),
            ("pdac_mask", self.pdac_mask, (sitk.sitkUInt8,)),
            ("ln_instances", self.ln_instances, (sitk.sitkUInt16, sitk.sitkUInt8)),
        ):
            _check_same_grid(name, img, ref)
            if img.GetPixelID() not in pixel_ids:
                raise AnalysisResultsError(
                    f"{name}: pixel type {img.GetPixelIDTypeAsString()}, expected "
                    f"{' or '.join(sitk.GetPixelIDValueAsString(p) for p in pixel_ids)}")
        # Value checks in O(n) over the maps (the standard study has 52 M voxels per map); a sort only
        # of the few node voxels (np.bincount would first copy the map as int64: 4 s per call).
        organ_max = int(sitk.GetArrayViewFromImage(self.organs).max(initial=0))
        if organ_max > 10:
            raise AnalysisResultsError(
                f"organs: label value {organ_max} found, expected 0 and 1-10 (lnmet.labels.ORGAN_CLASSES)")
        pdac_max = int(sitk.GetArrayViewFromImage(self.pdac_mask).max(initial=0))
        if pdac_max > 1:
            raise AnalysisResultsError(f"pdac_mask: value {pdac_max} found, expected 0/1")
        instances = sitk.GetArrayViewFromImage(self.ln_instances)
        present = set(np.unique(instances[instances != 0]).tolist())  # nodes are few voxels: fast
        indices = [n.index for n in self.lymph_nodes]
        if len(set(indices)) != len(indices):
            raise AnalysisResultsError(f"lymph_nodes: duplicate indices {sorted(indices)}")
        if present != set(indices):
            raise AnalysisResultsError(
                f"ln_instances holds node values {sorted(present)} but lymph_nodes lists indices "
                f"{sorted(indices)}; expected the same set")
        uids = [n.tracking_uid for n in self.lymph_nodes]
        if len(set(uids)) != len(uids):
            raise AnalysisResultsError("lymph_nodes: tracking UIDs must be unique")
        organ_keys = {c.key for c in ORGAN_CLASSES}
        for n in self.lymph_nodes:
            if n.nearest_structure not in organ_keys and n.nearest_structure != "":
                raise AnalysisResultsError(
                    f"lymph node {n.index}: nearest_structure {n.nearest_structure!r}, expected a key of "
                    "lnmet.labels.ORGAN_CLASSES (or '' when no organ/vessel was segmented)")
            attrs = ["volume_mm3", "short_axis_mm", "long_axis_mm", "mean_hu_venous", "probability_positive"]
            if n.nearest_structure:
                attrs.append("distance_mm")  # NaN allowed only when there is no structure
            for attr in attrs:
                v = getattr(n, attr)
                if v is None or not math.isfinite(float(v)):
                    raise AnalysisResultsError(f"lymph node {n.index}: {attr} is {v!r}, expected a finite number")
            if not 0.0 <= n.probability_positive <= 1.0:
                raise AnalysisResultsError(
                    f"lymph node {n.index}: probability_positive {n.probability_positive} outside [0, 1]")
        if self.tumour.found != bool(pdac_max):
            raise AnalysisResultsError(
                f"tumour.found is {self.tumour.found} but the PDAC mask is {'non-empty' if pdac_max else 'empty'}")
        if self.ln_threshold is not None and not 0.0 <= self.ln_threshold <= 1.0:
            raise AnalysisResultsError(f"ln_threshold {self.ln_threshold} outside [0, 1]")
        p = self.patient.probability
        if self.status == "not_assessable" and (p is not None or self.patient.positive is not None):
            raise AnalysisResultsError("the study is not assessable (quality gate) but the patient-level probability "
                                       "or decision is set; expected both withheld (None)")
        if p is not None and not 0.0 <= p <= 1.0:
            raise AnalysisResultsError(f"patient probability {p} outside [0, 1]")
        if self.organ_sources is not None:
            sources = self.organ_sources.per_class
            if set(sources) != organ_keys or set(sources.values()) - {"model", "input_seg", "nifti"}:
                raise AnalysisResultsError(
                    f"organ_sources: {sources}; expected every key of lnmet.labels.ORGAN_CLASSES with source "
                    "'model', 'input_seg' or 'nifti'")
        if self.run.single_phase != (self.arterial is None):
            raise AnalysisResultsError(
                f"run.single_phase is {self.run.single_phase} but the arterial series is "
                f"{'missing' if self.arterial is None else 'present'}")


def _check_same_grid(name: str, img: sitk.Image, ref: sitk.Image) -> None:
    same = (img.GetSize() == ref.GetSize()
            and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5))
    if not same:
        raise AnalysisResultsError(
            f"{name}: not on the venous reference grid (size {img.GetSize()} vs {ref.GetSize()}, "
            f"spacing {img.GetSpacing()} vs {ref.GetSpacing()}, origin {img.GetOrigin()} vs "
            f"{ref.GetOrigin()}); resample it onto the reference grid first")


@dataclass
class PdfDocument:
    """The human-readable report: the PDF file's bytes and its DICOM Encapsulated PDF instance."""

    pdf_bytes: bytes
    dataset: Dataset
    page_count: int
    key_images: list[dict[str, Any]] = field(default_factory=list)  # what each key image shows
