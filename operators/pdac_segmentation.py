"""PDACSegmentationOperator: the tumour (PDAC) segmentation.

Ports: inputs ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`) and ``organs_working``
(the organ map on the working grid); outputs ``pdac_working`` (``sitk.Image`` uint8 0/1 on the
working grid), ``pdac`` (uint8 0/1 on the reference grid) and ``tumour_selection``
(:class:`lnmet.types.TumourSelection`: how many components the model found and which rule chose the
kept one, for the outputs). Same inference as the organ model
(:mod:`lnmet.inference`); the model is ``pdac_seg``: the ``model_path`` argument, else
``<app context models>/pdac_seg/model.ts``. Of the model's components one is kept as the primary
tumour, anchored to the segmented pancreas (:func:`lnmet.tumour.primary_tumour`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.config import Settings
from lnmet.geometry import resample_image, resample_labels
from lnmet.inference import SegmentationModel, labels_to_grid, model_inputs, resolve_model_path
from lnmet.labels import ORGAN_BY_KEY
from lnmet.tumour import TumourChoice, primary_tumour
from lnmet.types import RegisteredPhases

log = logging.getLogger(__name__)

MODEL_NAME = "pdac_seg"
PANCREAS_LABEL = ORGAN_BY_KEY["pancreas"].label


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


def pancreas_on(organs: sitk.Image | None, grid: sitk.Image) -> np.ndarray | None:
    """The pancreas of the organ map ``organs`` as a [Z, Y, X] bool array on ``grid`` (None without a map)."""
    if organs is None:
        return None
    if not _same_grid(organs, grid):
        organs = resample_labels(organs, grid, smooth=False)
    return sitk.GetArrayFromImage(organs) == PANCREAS_LABEL


def keep_primary_tumour(labels: sitk.Image, organs: sitk.Image | None, reach_mm: float = 10.0,
                        venous: sitk.Image | None = None,
                        min_density_hu: float | None = None) -> tuple[sitk.Image, TumourChoice]:
    """The primary tumour (uint8 0/1, on the grid of the model's label map ``labels``) given an organ
    map on any grid (:func:`lnmet.tumour.primary_tumour`), and how it was chosen; ``venous`` (HU, any
    grid) and ``min_density_hu``: the density check (None: off)."""
    arr = sitk.GetArrayViewFromImage(labels) > 0
    venous_hu = None
    if min_density_hu is not None:
        if venous is None:
            raise ValueError("the PDAC density check (app.yaml pdac_segmentation.min_density_hu) needs the venous image")
        if not _same_grid(venous, labels):
            venous = resample_image(venous, labels)
        venous_hu = sitk.GetArrayViewFromImage(venous)
    choice = primary_tumour(arr, pancreas_on(organs, labels), labels.GetSpacing()[::-1], reach_mm, venous_hu,
                            min_density_hu)
    kept = sitk.GetImageFromArray(choice.mask)
    kept.CopyInformation(labels)
    log.info("PDAC segmentation: %s; %d of %d voxels kept", choice.describe(reach_mm), int(choice.mask.sum()),
             int(arr.sum()))
    return kept, choice


def segment_pdac(registered: RegisteredPhases, model: SegmentationModel, organs_working: sitk.Image | None,
                 reach_mm: float = 10.0, min_density_hu: float | None = None
                 ) -> tuple[sitk.Image, sitk.Image, TumourChoice]:
    """Tumour mask (uint8 0/1, the primary tumour) on the working grid and on the reference grid,
    and how the component was chosen (``min_density_hu``: the density check on the working venous
    image, :func:`keep_primary_tumour`)."""
    channels, grid = model_inputs(registered, model)
    labels, _ = model.segment(channels, spacing_zyx=grid.GetSpacing()[::-1])
    raw = sitk.GetImageFromArray(labels)
    raw.CopyInformation(grid)
    working, choice = keep_primary_tumour(raw, organs_working, reach_mm, registered.working_venous, min_density_hu)
    return working, labels_to_grid(working, registered.reference), choice


class PDACSegmentationOperator(Operator):
    """Inputs ``registered_phases``, ``organs_working``; outputs ``pdac_working``, ``pdac``, ``tumour_selection``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, settings: Settings | None = None,
                 **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = SegmentationModel.load(path, device)
        self._reach_mm = settings.tumour_pancreas_reach_mm if settings is not None else 10.0
        self._min_density_hu = settings.tumour_min_density_hu if settings is not None else None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.input("organs_working")
        spec.output("pdac_working").condition(ConditionType.NONE)
        spec.output("pdac").condition(ConditionType.NONE)
        spec.output("tumour_selection").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        organs = op_input.receive("organs_working")
        working, reference, choice = segment_pdac(registered, self._model, organs, self._reach_mm, self._min_density_hu)
        op_output.emit(working, "pdac_working")
        op_output.emit(reference, "pdac")
        op_output.emit(choice.selection(self._reach_mm), "tumour_selection")
