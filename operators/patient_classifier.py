"""PatientClassifierOperator: the patient-level LN metastasis prediction (paper section 3.2, Eq. 7).

Ports:

- inputs ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`), ``pdac`` (``sitk.Image``
  uint8 0/1 on the reference grid) and ``ln_findings`` (:class:`lnmet.types.LNFindings`: the nodes
  with the LN instance and organ maps, from the LN identification operator); ``pdac_working`` is
  accepted (optional) and not needed; ``tumour_selection`` (optional,
  :class:`lnmet.types.TumourSelection`) says how the PDAC operator chose the tumour, for the outputs;
- outputs ``tumour`` (:class:`lnmet.types.TumourFinding`), ``patient_prediction``
  (:class:`lnmet.types.PatientPrediction`) and ``analysis_results``
  (:class:`lnmet.results.AnalysisResults`, validated) for the output builders. The models listed in
  it are the ``models`` argument (the app's verified models) or, without it, the two this operator
  knows (LN identification and patient classifier).

The 9 tumour patches of the PDAC mask go through the patient model (``patient_cls``: the
``model_path`` argument, else ``<app context models>/patient_cls/model.ts``) with the volume of the
largest positive LN; the 9 probabilities are averaged and compared with the model's threshold (best
balanced accuracy on validation data) unless app.yaml ``patient_classifier.threshold`` overrides it.
A probability closer to the threshold than app.yaml ``patient_classifier.borderline_margin`` is
marked borderline (:func:`mark_borderline`). When the PDAC model found no tumour there is no silent guess: the prediction falls back to the
nodes-only rule (largest positive LN volume against the volume threshold stored in the model) and
both the tumour finding and the prediction carry :data:`NO_TUMOUR_STATEMENT`, or, when the model's
regions all lay away from the pancreas, a statement that says so
(:func:`lnmet.tumour.selection_statement`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.config import Settings, load_settings
from lnmet.inference import resolve_model_path
from lnmet.measurements import measure_tumour
from lnmet.model_io import sha256_file
from lnmet.networks.patient_classifier import PatientModel, nodes_only_score
from lnmet.tumour import selection_statement
from lnmet.types import (LNFindings, LymphNodeFinding, ModelInfo, OrganSources, PatientPrediction,
                         RegisteredPhases, TumourFinding, TumourSelection)

log = logging.getLogger(__name__)

MODEL_NAME = "patient_cls"
NO_TUMOUR_STATEMENT = ("No tumour was found by the PDAC segmentation model; the prediction uses the lymph "
                       "nodes only")


def largest_positive_volume(nodes: Sequence[LymphNodeFinding]) -> float:
    """Volume (mm^3) of the largest positive LN; 0 when none is positive."""
    return max((float(n.volume_mm3) for n in nodes if n.positive), default=0.0)


def nodes_only_prediction(volume_mm3: float, model: PatientModel, statement: str = "") -> PatientPrediction:
    """The nodes-only rule (ClsbyLNSeg): positive when the largest positive LN volume reaches the
    model's stored volume threshold; the score ``v / (v + t)`` is 0.5 at the threshold."""
    t = model.nodes_only_threshold_mm3
    score = float(nodes_only_score(volume_mm3, t))
    return PatientPrediction(probability=score, threshold=0.5, positive=bool(volume_mm3 >= t), method="nodes_only",
                             largest_positive_ln_volume_mm3=float(volume_mm3), statement=statement)


def mark_borderline(prediction: PatientPrediction, margin: float) -> PatientPrediction:
    """The prediction with app.yaml's borderline margin; a borderline one says so in its statement
    (which every output carries): its decision could go either way. The margin measures how far the
    registration moves an image-reading classifier's probability, so the nodes-only rule (a node
    volume against a stored threshold) gets none."""
    if prediction.method == "nodes_only":
        margin = 0.0
    marked = dataclasses.replace(prediction, borderline_margin=float(margin))
    if not marked.borderline:
        return marked
    note = (f"Borderline: the probability lies within {margin:.2f} of the decision threshold (app.yaml "
            "borderline_margin: how far a different registration setting moved it on validation studies); the "
            "decision could go either way.")
    log.info("patient probability within the borderline margin %.2f of the threshold", margin)
    return dataclasses.replace(marked, statement=" ".join(s for s in (prediction.statement, note) if s))


def classify_patient(registered: RegisteredPhases, pdac: sitk.Image, nodes: Sequence[LymphNodeFinding],
                     model: PatientModel, settings: Settings,
                     selection: TumourSelection | None = None) -> tuple[TumourFinding, PatientPrediction]:
    """The tumour finding and the patient-level prediction (see the module docstring); ``selection``
    (how the PDAC operator chose the tumour) goes into the tumour finding."""
    tumour, prediction = _classify(registered, pdac, nodes, model, settings, selection)
    return tumour, mark_borderline(prediction, settings.patient_borderline_margin)


def _classify(registered: RegisteredPhases, pdac: sitk.Image, nodes: Sequence[LymphNodeFinding],
              model: PatientModel, settings: Settings,
              selection: TumourSelection | None) -> tuple[TumourFinding, PatientPrediction]:
    reference = registered.reference
    volume = largest_positive_volume(nodes)
    measured = measure_tumour(pdac, reference)
    chosen = {"model_components": None if selection is None else selection.components,
              "selection_rule": None if selection is None else selection.rule}
    if measured is None:
        statement = selection_statement(selection) or NO_TUMOUR_STATEMENT
        log.warning("no tumour kept from the PDAC mask: nodes-only prediction")
        tumour = TumourFinding(found=False, statement=statement, **chosen)
        return tumour, nodes_only_prediction(volume, model, statement)
    tumour = TumourFinding(found=True, volume_mm3=measured.volume_mm3,
                           max_axial_diameter_mm=measured.max_axial_diameter_mm, centroid_mm=measured.centroid_mm,
                           mean_hu_venous=measured.mean_hu_venous, statement=selection_statement(selection),
                           **chosen)
    if model.mode == "nodes_only":
        return tumour, nodes_only_prediction(volume, model)
    arterial = None if (registered.single_phase or registered.arterial is None) else registered.arterial.image
    prob, per_patch = model.predict(reference, arterial, pdac, volume,
                                    arterial_transform=None if arterial is None else registered.transform)
    threshold = float(model.threshold if settings.patient_threshold is None else settings.patient_threshold)
    statement = ("Single-phase study: the venous phase stands in for the arterial phase." if
                 registered.single_phase and any("arterial" in c.lower() for c in model.channel_names) else "")
    log.info("patient classifier (%s): probability %.3f (9 patches %.3f-%.3f), threshold %.3f", model.mode, prob,
             float(per_patch.min()), float(per_patch.max()), threshold)
    return tumour, PatientPrediction(probability=prob, threshold=threshold, positive=bool(prob >= threshold),
                                     method=model.mode, largest_positive_ln_volume_mm3=volume, statement=statement)


def assemble_results(registered: RegisteredPhases, findings: LNFindings, pdac: sitk.Image, tumour: TumourFinding,
                     prediction: PatientPrediction, models: Sequence[ModelInfo], settings: Settings,
                     device: str = "cpu", organ_sources: OrganSources | None = None) -> Any:
    """The :class:`lnmet.results.AnalysisResults` handed to the output builders."""
    from lnmet.results import AnalysisResults, RunInfo

    from lnmet.timing import TIMER

    volumes = [registered.venous] + ([registered.arterial] if registered.arterial is not None else [])
    warnings = [s for s in (tumour.statement, prediction.statement) if s]
    warnings += [f"{v.phase} series: {note}" for v in volumes for note in v.notes]
    run = RunInfo(app_name=settings.app_title, app_version=settings.app_version,
                  single_phase=bool(registered.single_phase), device=device,
                  phase_selection_log=list(registered.venous.selection_log),
                  timings_s=TIMER.top_level_seconds(), warnings=list(dict.fromkeys(warnings)))
    pdac_u8 = sitk.Cast(pdac > 0, sitk.sitkUInt8)
    results = AnalysisResults(
        venous=registered.venous, arterial=None if registered.arterial is None else registered.arterial.series,
        organs=sitk.Cast(findings.organs, sitk.sitkUInt8), pdac_mask=pdac_u8, tumour=tumour,
        ln_instances=findings.ln_instances, lymph_nodes=list(findings.lymph_nodes), patient=prediction,
        models=list(models), run=run, ln_threshold=float(findings.threshold),
        organ_sources=organ_sources)
    results.validate()
    return results


class PatientClassifierOperator(Operator):
    """Inputs ``registered_phases``, ``pdac``, ``ln_findings`` (``pdac_working`` optional); outputs
    ``tumour``, ``patient_prediction``, ``analysis_results``."""

    def __init__(self, fragment: Fragment, *args: Any, model_path: str | Path | None = None,
                 app_context: Any = None, device: str | None = None, settings: Settings | None = None,
                 models: Sequence[ModelInfo] | None = None, **kwargs: Any):
        path = resolve_model_path(MODEL_NAME, model_path, app_context)
        self._model = PatientModel.load(path, device)
        meta = self._model.metadata
        self._info = ModelInfo(name=str(meta["name"]), version=str(meta["version"]), file=str(path),
                               sha256=sha256_file(path), trained_on=str(meta.get("trained_on", "")), metadata=meta)
        self._models = list(models) if models is not None else None
        self._settings = settings or load_settings()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("registered_phases")
        spec.input("pdac")
        spec.input("ln_findings")
        spec.input("pdac_working").condition(ConditionType.NONE)
        spec.input("organ_sources").condition(ConditionType.NONE)
        spec.input("tumour_selection").condition(ConditionType.NONE)
        spec.output("tumour").condition(ConditionType.NONE)
        spec.output("patient_prediction").condition(ConditionType.NONE)
        spec.output("analysis_results").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        registered = op_input.receive("registered_phases")
        pdac = op_input.receive("pdac")
        findings = op_input.receive("ln_findings")
        op_input.receive("pdac_working")
        sources = op_input.receive("organ_sources")
        selection = op_input.receive("tumour_selection")
        tumour, prediction = classify_patient(registered, pdac, findings.lymph_nodes, self._model, self._settings,
                                              selection)
        op_output.emit(tumour, "tumour")
        op_output.emit(prediction, "patient_prediction")
        models = self._models if self._models is not None else (
            [m for m in (findings.model, self._info) if m is not None])
        op_output.emit(assemble_results(registered, findings, pdac, tumour, prediction, models, self._settings,
                                        str(self._model.device), sources), "analysis_results")
