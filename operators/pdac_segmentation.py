"""PDACSegmentationOperator: the tumour (PDAC) segmentation.

Ports: input ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`); outputs ``pdac_working``
(``sitk.Image`` uint8 0/1 on the working grid) and ``pdac`` (uint8 0/1 on the reference grid).
Same inference as the organ model (:mod:`lnmet.inference`); the model is ``pdac_seg``: the
``model_path`` argument, else ``<app context models>/pdac_seg/model.ts``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.inference import SegmentationModel, resolve_model_path, segment_registered
from lnmet.types import RegisteredPhases

log = logging.getLogger(__name__)

MODEL_NAME = "pdac_seg"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected component (26-connectivity): a patient has one primary tumour,
    smaller islands are false positives (nnU-Net's usual post-processing for single objects)."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labelled.ravel())[1:]
    return (labelled == int(np.argmax(sizes)) + 1).astype(np.uint8)


def segment_pdac(registered: RegisteredPhases, model: SegmentationModel) -> tuple[sitk.Image, sitk.Image]:
    """Tumour mask (uint8 0/1, largest component) on the working grid and on the reference grid."""
    labels, working, reference = segment_registered(registered, model, lambda a: largest_component(a > 0))
    log.info("PDAC segmentation: %d working voxels (%d before keeping the largest component)",
             int(sitk.GetArrayViewFromImage(working).sum()), int((labels > 0).sum()))
    return working, reference


class PDACSegmentationOperator(Operator):
    """Input ``registered_phases``; outputs ``pdac_working`` and ``pdac``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = SegmentationModel.load(path, device)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.output("pdac_working").condition(ConditionType.NONE)
        spec.output("pdac").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        working, reference = segment_pdac(registered, self._model)
        op_output.emit(working, "pdac_working")
        op_output.emit(reference, "pdac")
