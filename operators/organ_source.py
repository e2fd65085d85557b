"""OrganSourceOperator: reads and checks the site's organ segmentation before any long computation.

Ports: inputs ``dicom_series`` (``list[lnmet.dicom_io.DicomSeries]``, from StudyLoaderOperator),
``venous_volume`` and ``arterial_volume`` (:class:`lnmet.types.PhaseVolume`, the latter ``None``
when single-phase, from SeriesToVolumeOperator); outputs ``venous_volume`` and ``arterial_volume``
(passed on unchanged to PhaseRegistrationOperator) and ``site_organs``
(:class:`lnmet.types.SiteOrgans` on the venous reference grid, or ``None`` for ``organ_source:
model``) for OrganSegmentationOperator.

It sits between intake and registration so that an unusable source (app.yaml ``organ_source``
``input_seg``: no SEG referencing the venous series, another frame of reference, no pancreas;
``nifti``: not on the venous grid, no pancreas) stops the run in seconds, before registration and
inference take minutes. The rules are those of :mod:`lnmet.organ_sources`.
"""

from __future__ import annotations

import logging
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from lnmet.config import Settings, load_settings
from lnmet.organ_sources import load_site_organs

log = logging.getLogger(__name__)


class OrganSourceOperator(Operator):
    """Inputs ``dicom_series``, ``venous_volume``, ``arterial_volume``; outputs ``venous_volume``,
    ``arterial_volume`` (unchanged) and ``site_organs``."""

    def __init__(self, fragment: Fragment, *args: Any, settings: Settings | None = None, **kwargs: Any):
        self._settings = settings or load_settings()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_series")
        spec.input("venous_volume")
        spec.input("arterial_volume")
        spec.output("venous_volume")
        spec.output("arterial_volume")
        spec.output("site_organs")

    def compute(self, op_input, op_output, context) -> None:
        series = op_input.receive("dicom_series")
        venous = op_input.receive("venous_volume")
        arterial = op_input.receive("arterial_volume")
        site = load_site_organs(self._settings, series, venous)
        op_output.emit(venous, "venous_volume")
        op_output.emit(arterial, "arterial_volume")
        op_output.emit(site, "site_organs")
