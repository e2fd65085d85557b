"""LNIdentificationOperator: LN instances, their measurements and their class (paper section 3.1.2).

Ports:

- inputs ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`), ``ln_probability``
  (``sitk.Image`` float32, LN probability on the working grid), ``organs`` (``sitk.Image`` uint8,
  labels 1-10 on the reference grid) and, optionally, ``attention`` (``sitk.Image`` float32 on the
  working grid; when it is not connected the map is recomputed from ``organs`` with app.yaml's
  ``attention`` settings);
- outputs ``ln_instances`` (``sitk.Image`` uint16 on the reference grid, 1..N), ``lymph_nodes``
  (``list[lnmet.types.LymphNodeFinding]``) and ``ln_findings`` (:class:`lnmet.types.LNFindings`,
  the same two with the organ map and the model, for the patient classifier).

Steps: connected components of the thresholded probability (:func:`lnmet.instances.ln_instances`,
app.yaml ``ln_detection.probability_threshold``, ``min_volume_mm3``, ``min_voxels``, ``min_density_hu``
and the fat-rim trim ``rim_fat_hu``); a crop centred on every
instance (with the instance's own mask, for a model that pools over it) through the LN
identification model, batched (:class:`lnmet.networks.ln_classifier.LNIdentifier`);
a node is positive when its probability reaches the model's stored threshold, unless app.yaml
``ln_detection.positive_threshold`` overrides it; measurements by :mod:`lnmet.measurements`. Each
node gets a new DICOM UID as its SR tracking identifier. The model is ``ln_cls``: the
``model_path`` argument, else ``<app context models>/ln_cls/model.ts``; device automatic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from pydicom.uid import generate_uid

from lnmet.attention import attention_map
from lnmet.config import Settings, load_settings
from lnmet.geometry import resample_image, resample_labels
from lnmet.inference import model_inputs, resolve_model_path
from lnmet.instances import app_instances
from lnmet.measurements import measure_lymph_nodes
from lnmet.model_io import sha256_file
from lnmet.networks.ln_classifier import LNIdentifier, identify_instances
from lnmet.types import LNFindings, LymphNodeFinding, ModelInfo, RegisteredPhases

log = logging.getLogger(__name__)

MODEL_NAME = "ln_cls"


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def positive_threshold(identifier: LNIdentifier, settings: Settings) -> float:
    """app.yaml ``ln_detection.positive_threshold`` when set, else the model's stored threshold."""
    override = settings.ln_detection.positive_threshold
    return float(identifier.threshold if override is None else override)


def identify_lymph_nodes(registered: RegisteredPhases, ln_probability: sitk.Image, organs: sitk.Image | None,
                         identifier: LNIdentifier, settings: Settings, attention: sitk.Image | None = None,
                         batch_size: int = 8) -> tuple[sitk.Image, list[LymphNodeFinding]]:
    """The LN instance map (uint16, reference grid) and one finding per instance."""
    reference = registered.reference
    if organs is not None and not _same_grid(organs, reference):
        raise ValueError("LN identification: the organ label map is not on the reference (venous) grid "
                         f"(size {organs.GetSize()} vs {reference.GetSize()})")
    det = settings.ln_detection
    instances = app_instances(ln_probability, reference, det)
    channels, grid = model_inputs(registered, identifier)
    att_arr = None
    if identifier.uses_attention:
        if attention is None:
            if organs is None:
                raise ValueError("LN identification: the model is attention-guided but neither an attention map "
                                 "nor an organ label map was given")
            attention = attention_map(resample_labels(organs, grid, smooth=False), settings.attention)
        elif not _same_grid(attention, grid):
            attention = resample_image(attention, grid, default_value=0.0)
        att_arr = sitk.GetArrayFromImage(attention).astype(np.float32)
    ids, probs = identify_instances(identifier, instances, grid, channels, att_arr, batch_size)
    threshold = positive_threshold(identifier, settings)
    prob_by_id = {i: float(p) for i, p in zip(ids, probs)}
    findings = []
    for m in measure_lymph_nodes(instances, reference, organs):
        p = prob_by_id[m.index]
        findings.append(LymphNodeFinding(
            index=m.index, tracking_uid=generate_uid(), volume_mm3=m.volume_mm3, short_axis_mm=m.short_axis_mm,
            long_axis_mm=m.long_axis_mm, mean_hu_venous=m.mean_hu_venous, centroid_mm=m.centroid_mm,
            nearest_structure=m.nearest_structure, distance_mm=m.distance_mm, probability_positive=p,
            positive=bool(p >= threshold)))
    log.info("LN identification: %d nodes, %d positive (threshold %.3f)", len(findings),
             sum(f.positive for f in findings), threshold)
    return instances, findings


def model_info(identifier: LNIdentifier) -> ModelInfo:
    meta = identifier.metadata
    return ModelInfo(name=str(meta["name"]), version=str(meta["version"]), file=identifier.path,
                     sha256=sha256_file(identifier.path) if identifier.path else "",
                     trained_on=str(meta.get("trained_on", "")), metadata=meta)


class LNIdentificationOperator(Operator):
    """Inputs ``registered_phases``, ``ln_probability``, ``organs``, optional ``attention``;
    outputs ``ln_instances``, ``lymph_nodes``, ``ln_findings``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, settings: Settings | None = None,
                 batch_size: int = 8, **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._identifier = LNIdentifier.load(path, device)
        self._info = model_info(self._identifier)
        self._settings = settings or load_settings()
        self._batch_size = int(batch_size)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.input("ln_probability")
        spec.input("organs")
        spec.input("attention").condition(ConditionType.NONE)
        spec.output("ln_instances").condition(ConditionType.NONE)
        spec.output("lymph_nodes").condition(ConditionType.NONE)
        spec.output("ln_findings").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        probability = op_input.receive("ln_probability")
        organs = op_input.receive("organs")
        attention = op_input.receive("attention")
        instances, nodes = identify_lymph_nodes(registered, probability, organs, self._identifier, self._settings,
                                                attention, self._batch_size)
        op_output.emit(instances, "ln_instances")
        op_output.emit(nodes, "lymph_nodes")
        op_output.emit(LNFindings(ln_instances=instances, lymph_nodes=nodes, organs=organs,
                                  threshold=positive_threshold(self._identifier, self._settings), model=self._info),
                       "ln_findings")
