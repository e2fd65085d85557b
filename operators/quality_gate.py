"""QualityGateOperator: between the models and the verdict, answers "not assessable" when the scan is
outside what the models know or their output is implausible (checks: :mod:`lnmet.quality`).

Ports:
    in  ``analysis_results`` (:class:`lnmet.results.AnalysisResults`, from the patient classifier)
    in  ``registered_phases`` (:class:`lnmet.types.RegisteredPhases`), ``organs_working`` (organ
        labels, working grid), ``attention`` (attention map, working grid), ``pdac_working``
        (tumour mask, working grid)
    out ``analysis_results``: the same results with the quality report attached
        (:attr:`AnalysisResults.quality`); when a critical check failed, the patient-level
        probability and decision are withheld (``None``: "not assessable"), the model's probability
        is kept in the report only as "not a decision", and every output says why. The SEG, the
        node and tumour findings are still written, for review.

Settings: app.yaml ``quality_gate`` (each check's accepted range and severity).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from lnmet.config import Settings, load_settings
from lnmet.quality import QualityReport, assess_quality, gate_inputs
from lnmet.results import AnalysisResults

log = logging.getLogger(__name__)

NOT_ASSESSABLE_STATEMENT = ("Not assessable: the scan or the models' output failed the quality gate ({checks}); "
                            "no patient-level prediction is given")


def gate_results(results: AnalysisResults, report: QualityReport) -> AnalysisResults:
    """``results`` with ``report`` attached; when not assessable the patient-level probability and
    decision are withheld (pure function)."""
    # Failed warning checks join the run's warnings; failed critical ones are the status itself.
    warnings = [f"quality check {c.name} failed (warning): {c.reason}" for c in report.warnings]
    run = dataclasses.replace(results.run, warnings=list(dict.fromkeys(results.run.warnings + warnings)))
    patient = results.patient
    if not report.assessable:
        report = dataclasses.replace(report, withheld_probability=patient.probability)
        statement = NOT_ASSESSABLE_STATEMENT.format(checks=", ".join(c.name for c in report.blocking))
        patient = dataclasses.replace(patient, probability=None, positive=None, statement=statement)
    return dataclasses.replace(results, patient=patient, run=run, quality=report)


class QualityGateOperator(Operator):
    """Runs the quality gate (see the module docstring for ports)."""

    def __init__(self, fragment: Fragment, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        settings = settings or load_settings()
        if settings.quality_gate is None:
            raise ValueError("QualityGateOperator: the settings have no 'quality_gate' section")
        self._settings = settings.quality_gate
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("analysis_results")
        spec.input("registered_phases")
        spec.input("organs_working")
        spec.input("attention")
        spec.input("pdac_working")
        spec.output("analysis_results")

    def compute(self, op_input, op_output, context) -> None:
        results: AnalysisResults = op_input.receive("analysis_results")
        registered = op_input.receive("registered_phases")
        organs = op_input.receive("organs_working")
        attention = op_input.receive("attention")
        pdac = op_input.receive("pdac_working")
        inputs = gate_inputs(registered, organs, attention=attention, pdac_working=pdac,
                             nodes=results.lymph_nodes, models=results.models)
        report = assess_quality(inputs, self._settings)
        for c in report.checks:
            if c.failed:
                log.warning("quality check %s failed (%s): %s", c.name, c.severity, c.reason)
        log.info("quality gate in %.1f s: %s", report.seconds, report.summary())
        op_output.emit(gate_results(results, report), "analysis_results")
