"""OrganSegmentationOperator: the 10 organ/vessel classes of the attention map.

Ports: input ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`); outputs
``organs_working`` (``sitk.Image`` uint8, labels of :data:`lnmet.labels.ORGAN_CLASSES` on the
working grid, for the attention map) and ``organs`` (the same labels on the reference grid, for the
DICOM SEG and the measurements).

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

from lnmet.inference import SegmentationModel, resolve_model_path, segment_registered
from lnmet.labels import ORGAN_BY_LABEL
from lnmet.types import RegisteredPhases

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


class OrganSegmentationOperator(Operator):
    """Input ``registered_phases``; outputs ``organs_working`` and ``organs`` (uint8 label maps)."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = SegmentationModel.load(path, device)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.output("organs_working").condition(ConditionType.NONE)
        spec.output("organs").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        working, reference = segment_organs(registered, self._model)
        op_output.emit(working, "organs_working")
        op_output.emit(reference, "organs")
