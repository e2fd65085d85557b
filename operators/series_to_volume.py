"""SeriesToVolumeOperator: the chosen phases as volumes (float32 HU ``sitk.Image``).

Ports: input ``phase_selection`` (:class:`lnmet.types.PhaseSelection`); outputs ``venous_volume``
(:class:`lnmet.types.PhaseVolume`) and ``arterial_volume`` (``PhaseVolume``, or ``None`` when the
selection is single-phase).

The work is done by :func:`lnmet.dicom_io.build_volume`: slices sorted along the slice normal,
spacing from the positions, direction from the orientation cosines, rescale applied, duplicates
resolved (highest InstanceNumber, then highest SOP Instance UID; recorded in ``PhaseVolume.notes``),
and a clear error for missing slices, irregular spacing, gantry tilt and multi-frame images. The
HU are checked (:func:`lnmet.dicom_io.check_hu_range`: blank, constant or mis-scaled pixel data stop
the run naming the series) and so are the phases by their content
(:mod:`lnmet.phase_content`: the series taken as arterial must show the brighter large vessel;
``phase_policy.content_check`` says whether a pair that looks swapped stops the run or is a
warning). All of this is intake: it happens before any computation.

Each ``PhaseVolume`` carries the source headers with the identifiers the loader completed
(``source_headers``), which the SEG/SR/PDF reference, and its ``series.content`` measurement.
"""

from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from lnmet.config import Settings, load_settings
from lnmet.dicom_io import DicomSeries, build_volume
from lnmet.phase_content import PhaseContentError, VesselMeasure, brightest_large_vessel, swapped_phases_message
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
        source_headers=[inst.dataset for inst in built.instances],
    )


def _label(ref: SeriesRef) -> str:
    """How a chosen series is named in messages (as lnmet.dicom_io.DicomSeries.label)."""
    number = ref.series_number if ref.series_number is not None else "<no SeriesNumber>"
    return f"series {number} '{(ref.series_description or '<no description>')[:80]}' (UID {ref.series_instance_uid})"


def check_phase_content(venous: PhaseVolume, arterial: PhaseVolume | None, settings: Settings) -> None:
    """Measure what each phase shows (:mod:`lnmet.phase_content`), record it in ``series.content``
    and the notes, and act on a pair that looks swapped (``phase_policy.content_check``)."""
    if settings.phase_content_check == "off":
        return
    measures: dict[str, VesselMeasure] = {}
    for volume in (venous, arterial):
        if volume is None:
            continue
        m = brightest_large_vessel(volume.image)
        measures[volume.phase] = m
        volume.series.content = m.as_dict()
        log.info("%s phase content: %s", volume.phase, m.text())
        if m.hu is None:
            note = (f"{m.text()} in the series used as the {volume.phase} phase: it may be a scan without contrast "
                    "or one that does not cover the abdomen")
            volume.notes.append(note)
            log.warning("%s phase: %s", volume.phase, note)
    if arterial is None:
        return
    swapped = swapped_phases_message(measures["arterial"], measures["venous"], settings.phase_content_margin_hu,
                                     _label(arterial.series), _label(venous.series))
    if swapped is None:
        return
    if settings.phase_content_check == "error":
        raise PhaseContentError(swapped + " (phase_policy.content_check: error; 'warn' goes on with a warning)")
    log.warning(swapped)
    for volume in (venous, arterial):
        volume.notes.append(swapped)


def selection_to_volumes(selection: PhaseSelection,
                         settings: Settings | None = None) -> tuple[PhaseVolume, PhaseVolume | None]:
    """Both phases of a selection as volumes (arterial ``None`` when single-phase), their HU and
    their content checked."""
    settings = settings or load_settings()
    venous = series_to_volume(selection.venous, selection.venous_ref)
    venous.selection_log = list(selection.log)  # reported with the results
    arterial = None
    if selection.arterial is not None and selection.arterial_ref is not None:
        arterial = series_to_volume(selection.arterial, selection.arterial_ref)
    check_phase_content(venous, arterial, settings)
    return venous, arterial


class SeriesToVolumeOperator(Operator):
    """Input ``phase_selection``; outputs ``venous_volume`` and ``arterial_volume`` (None if single-phase)."""

    def __init__(self, fragment: Fragment, *args, settings: Settings | None = None, **kwargs):
        self._settings = settings or load_settings()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("phase_selection")
        spec.output("venous_volume")
        spec.output("arterial_volume")

    def compute(self, op_input, op_output, context) -> None:
        selection = op_input.receive("phase_selection")
        venous, arterial = selection_to_volumes(selection, self._settings)
        op_output.emit(venous, "venous_volume")
        op_output.emit(arterial, "arterial_volume")
