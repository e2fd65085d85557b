"""SeriesToVolumeOperator: the chosen phases as volumes (float32 HU ``sitk.Image``).

Ports: input ``phase_selection`` (:class:`lnmet.types.PhaseSelection`); outputs ``venous_volume``
(:class:`lnmet.types.PhaseVolume`) and ``arterial_volume`` (``PhaseVolume``, or ``None`` when the
selection is single-phase).

The work is done by :func:`lnmet.dicom_io.build_volume`: slices sorted along the slice normal,
spacing from the positions, direction from the orientation cosines, rescale applied, duplicates
resolved (highest InstanceNumber, then highest SOP Instance UID; recorded in ``PhaseVolume.notes``),
and a clear error for missing slices, irregular spacing, gantry tilt and multi-frame images.
"""

from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from lnmet.dicom_io import DicomSeries, build_volume
from lnmet.types import PhaseSelection, PhaseVolume, SeriesRef

log = logging.getLogger(__name__)


def series_to_volume(series: DicomSeries, ref: SeriesRef) -> PhaseVolume:
    """Decode one chosen series into a :class:`PhaseVolume`."""
    built = build_volume(series)
    frame_of_reference = str(series.get("FrameOfReferenceUID", "") or "")
    for note in built.notes:
        log.info("%s phase: %s", ref.phase, note)
    size = built.image.GetSize()
    log.info("%s phase: volume %dx%dx%d, spacing %s mm", ref.phase, *size,
             ", ".join(f"{s:.3f}" for s in built.image.GetSpacing()))
    return PhaseVolume(
        phase=ref.phase,
        image=built.image,
        series=ref,
        source_files=built.source_files,
        sop_instance_uids=built.sop_instance_uids,
        sop_class_uid=series.sop_class_uid,
        frame_of_reference_uid=frame_of_reference,
        notes=built.notes,
    )


def selection_to_volumes(selection: PhaseSelection) -> tuple[PhaseVolume, PhaseVolume | None]:
    """Both phases of a selection as volumes (arterial ``None`` when single-phase)."""
    venous = series_to_volume(selection.venous, selection.venous_ref)
    venous.selection_log = list(selection.log)  # reported with the results
    arterial = None
    if selection.arterial is not None and selection.arterial_ref is not None:
        arterial = series_to_volume(selection.arterial, selection.arterial_ref)
    return venous, arterial


class SeriesToVolumeOperator(Operator):
    """Input ``phase_selection``; outputs ``venous_volume`` and ``arterial_volume`` (None if single-phase)."""

    def __init__(self, fragment: Fragment, *args, **kwargs):
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("phase_selection")
        spec.output("venous_volume")
        spec.output("arterial_volume")

    def compute(self, op_input, op_output, context) -> None:
        selection = op_input.receive("phase_selection")
        venous, arterial = selection_to_volumes(selection)
        op_output.emit(venous, "venous_volume")
        op_output.emit(arterial, "arterial_volume")
