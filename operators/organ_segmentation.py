"""OrganSegmentationOperator: the 10 organ/vessel classes of the attention map.

Ports: input ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`) and, optionally,
``site_organs`` (:class:`lnmet.types.SiteOrgans` or ``None``, from OrganSourceOperator); outputs
``organs_working`` (``sitk.Image`` uint8, labels of :data:`lnmet.labels.ORGAN_CLASSES` on the
working grid, for the attention map), ``organs`` (the same labels on the reference grid, for the
DICOM SEG and the measurements) and ``organ_sources`` (:class:`lnmet.types.OrganSources`: which
source gave each class, for the outputs).

With site organs (app.yaml ``organ_source`` ``input_seg`` or ``nifti``) the site's classes are kept
as they are and the model fills only the classes the site lacks, in voxels the site leaves
unlabelled (:func:`lnmet.organ_sources.merge_labels`); when the site gives all ten the model is not
run.

Both registered phases are the input channels (the venous one in both when single-phase);
sliding-window inference restricted to the body (:mod:`lnmet.inference`). The model is the
``organ_seg`` model file: the ``model_path`` argument, else ``<app context models>/organ_seg/model.ts``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.config import Settings, load_settings
from lnmet.geometry import from_array
from lnmet.inference import SegmentationModel, labels_to_grid, model_inputs, resolve_model_path, segment_registered
from lnmet.labels import ORGAN_BY_LABEL, ORGAN_CLASSES
from lnmet.organ_sources import merge_labels, organ_sources
from lnmet.types import OrganSources, RegisteredPhases, SiteOrgans

log = logging.getLogger(__name__)

MODEL_NAME = "organ_seg"


def segment_organs(registered: RegisteredPhases, model: SegmentationModel) -> tuple[sitk.Image, sitk.Image]:
    """Organ labels on the working grid and on the reference grid (both uint8)."""
    unknown = [int(v) for v in model.metadata["classes"].values() if v and int(v) not in ORGAN_BY_LABEL]
    if unknown:
        raise ValueError(f"model {model.name}: class values {unknown} are not organ classes of lnmet.labels")
    _, working, reference = segment_registered(registered, model)
    if registered.single_phase:
        log.info("organ segmentation on the venous phase only (single-phase mode)")
    return working, reference


def organs_with_site(registered: RegisteredPhases, model: SegmentationModel, site: SiteOrgans | None,
                     setting: str = "model") -> tuple[sitk.Image, sitk.Image, OrganSources]:
    """Organ labels on the working and reference grids from the site's organs and/or the model (see
    the module docstring), and which source gave each class."""
    model_detail = f"bundled model {model.name} {model.metadata.get('version', '')}".strip()
    if site is None:
        working, reference = segment_organs(registered, model)
        return working, reference, organ_sources(setting, None, model_detail)
    if site.labels.GetSize() != registered.reference.GetSize():
        raise ValueError(f"site organs on grid {site.labels.GetSize()}, expected the venous grid "
                         f"{registered.reference.GetSize()}")
    if all(c.key in site.classes for c in ORGAN_CLASSES):
        log.info("organ segmentation: all classes from the site's %s; the model is not run", site.source)
        _, grid = model_inputs(registered, model)
        model_work = model_ref = None
    else:
        working, reference = segment_organs(registered, model)
        grid = working
        model_work, model_ref = sitk.GetArrayFromImage(working), sitk.GetArrayFromImage(reference)
    site_work = sitk.GetArrayFromImage(labels_to_grid(site.labels, grid))
    site_ref = sitk.GetArrayFromImage(site.labels)
    merged_work = from_array(merge_labels(site_work, model_work, site.classes), grid)
    merged_ref = from_array(merge_labels(site_ref, model_ref, site.classes), registered.reference)
    return merged_work, merged_ref, organ_sources(setting, site, model_detail)


class OrganSegmentationOperator(Operator):
    """Inputs ``registered_phases``, optional ``site_organs``; outputs ``organs_working``, ``organs``
    (uint8 label maps) and ``organ_sources``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, settings: Settings | None = None,
                 **kwargs: Any):
        self._setting = (settings or load_settings()).organ_source
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = SegmentationModel.load(path, device)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.input("site_organs").condition(ConditionType.NONE)  # optional: None or not connected = model
        spec.output("organs_working").condition(ConditionType.NONE)
        spec.output("organs").condition(ConditionType.NONE)
        spec.output("organ_sources").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        site = op_input.receive("site_organs")
        working, reference, sources = organs_with_site(registered, self._model, site, self._setting)
        op_output.emit(working, "organs_working")
        op_output.emit(reference, "organs")
        op_output.emit(sources, "organ_sources")
