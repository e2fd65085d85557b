"""LNSegmentationOperator: attention-guided lymph-node segmentation (paper section 3.1.1, Eq. 3).

Ports: inputs ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`) and ``attention``
(``sitk.Image`` float32 on the working grid); output ``ln_probability`` (``sitk.Image`` float32 in
[0, 1], LN probability on the LN model's working grid).

Sliding-window inference with window skipping: windows where the attention is zero everywhere are
not run through the network (their logits are the head's bias, :mod:`lnmet.inference`). A model
trained without attention (the ablation baseline) runs every window and ignores the map. The model
is ``ln_seg``: the ``model_path`` argument, else ``<app context models>/ln_seg/model.ts``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.geometry import resample_image
from lnmet.inference import InferenceStats, SegmentationModel, model_inputs, resolve_model_path
from lnmet.types import RegisteredPhases

log = logging.getLogger(__name__)

MODEL_NAME = "ln_seg"


def segment_lymph_nodes(registered: RegisteredPhases, attention: sitk.Image | None, model: SegmentationModel,
                        skip_empty_windows: bool = True) -> tuple[sitk.Image, InferenceStats]:
    """LN probability (float32, working grid) and what the inference did."""
    channels, grid = model_inputs(registered, model)
    att_arr = None
    if model.uses_attention:
        if attention is None:
            raise ValueError(f"model {model.name} is attention-guided but no attention map was given")
        same_grid = (attention.GetSize() == grid.GetSize()
                     and np.allclose(attention.GetSpacing(), grid.GetSpacing())
                     and np.allclose(attention.GetOrigin(), grid.GetOrigin(), atol=1e-3))
        if not same_grid:  # e.g. an LN model at another spacing than the organ model
            attention = resample_image(attention, grid, default_value=0.0)
            log.info("attention map resampled onto the LN model's working grid %s", grid.GetSize())
        att_arr = sitk.GetArrayFromImage(attention).astype(np.float32)
    probs, stats = model.predict_probabilities(channels, att_arr, spacing_zyx=grid.GetSpacing()[::-1],
                                               skip_empty_attention=skip_empty_windows)
    out = sitk.GetImageFromArray(np.ascontiguousarray(probs[1], dtype=np.float32))
    out.CopyInformation(grid)
    return out, stats


class LNSegmentationOperator(Operator):
    """Inputs ``registered_phases``, ``attention``; output ``ln_probability``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, skip_empty_windows: bool = True, **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = SegmentationModel.load(path, device)
        self._skip = skip_empty_windows
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.input("attention")
        spec.output("ln_probability").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        attention = op_input.receive("attention")
        prob, _ = segment_lymph_nodes(registered, attention, self._model, self._skip)
        op_output.emit(prob, "ln_probability")
