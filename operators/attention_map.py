"""AttentionMapOperator: the signed-distance attention map (paper Eq. 1-2, Table 7 in app.yaml).

Ports: input ``organs_working`` (``sitk.Image`` uint8 organ labels on the working grid); output
``attention`` (``sitk.Image`` float32 in [0, 1], same grid). The parameters are app.yaml's
``attention`` section (``settings`` argument, else :func:`lnmet.config.load_settings`).

Diagnostics: when ``$PDAC_LN_DEBUG_DIR`` names a folder, the organ labels this map was built from and
the map itself are written there as ``organs_working.nii.gz`` and ``attention.nii.gz`` (working grid,
LPS geometry), to see where the LN search looked. Not an output of the product: nothing else is
written there, and nothing is written without the variable.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.attention import attention_map
from lnmet.config import Settings, load_settings

log = logging.getLogger(__name__)

DEBUG_DIR_ENV = "PDAC_LN_DEBUG_DIR"


def write_debug_maps(organs: sitk.Image, attention: sitk.Image) -> None:
    """The organ labels and the attention map as NIfTI in ``$PDAC_LN_DEBUG_DIR`` (when set)."""
    folder = os.environ.get(DEBUG_DIR_ENV, "").strip()
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(organs, str(out / "organs_working.nii.gz"))
    sitk.WriteImage(attention, str(out / "attention.nii.gz"))
    log.info("diagnostics: organ labels and attention map written to %s", out)


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
        write_debug_maps(organs, att)
        op_output.emit(att, "attention")



