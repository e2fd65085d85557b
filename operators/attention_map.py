"""AttentionMapOperator: the signed-distance attention map (paper Eq. 1-2, Table 7 in app.yaml).

Ports: input ``organs_working`` (``sitk.Image`` uint8 organ labels on the working grid); output
``attention`` (``sitk.Image`` float32 in [0, 1], same grid). The parameters are app.yaml's
``attention`` section (``settings`` argument, else :func:`lnmet.config.load_settings`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.attention import attention_map
from lnmet.config import Settings, load_settings

log = logging.getLogger(__name__)


class AttentionMapOperator(Operator):
    """Input ``organs_working``; output ``attention``."""

    def __init__(self, fragment: Fragment, *args: Any, settings: Settings | None = None, **kwargs: Any):
        self._settings = (settings or load_settings()).attention
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("organs_working")
        spec.output("attention").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        organs = op_input.receive("organs_working")
        t0 = time.perf_counter()
        att = attention_map(organs, self._settings)
        share = float((sitk.GetArrayViewFromImage(att) > 0).mean())
        log.info("attention map in %.1f s: %.1f%% of the working grid > 0", time.perf_counter() - t0, 100 * share)
        op_output.emit(att, "attention")



