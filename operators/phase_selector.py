"""PhaseSelectorOperator: the arterial and portal-venous CT series of one study.

Ports: input ``dicom_series`` (``list[lnmet.dicom_io.DicomSeries]``, from StudyLoaderOperator);
output ``phase_selection`` (:class:`lnmet.types.PhaseSelection`, whose ``venous``/``arterial`` are
the loader's ``DicomSeries``).

How a phase is chosen (settings: ``series_selection`` and ``phase_policy`` in app.yaml):

1. *Eligible* series only: modality CT, classic CT Image Storage, single-frame, no ImageType value
   that marks a localizer / derived / secondary / reformat / projection (``LOCALIZER``, ``SCOUT``,
   ``TOPOGRAM``, ``DERIVED``, ``SECONDARY``, ``REFORMATTED``, ``MPR``, ``MIP``, ``MINIP``,
   ``PROJECTION IMAGE``, ``SCREEN SAVE``), at least ``min_slices`` distinct slices, and a regular
   volume (:func:`lnmet.dicom_io.plan_slices`: no gap, no tilt, one geometry). Secondary captures,
   dose reports (SR or SC), SEG, SR, Enhanced/multi-frame CT are never chosen; every refusal is
   logged with its reason.
2. *Rules* (``series_selection.rules.<phase>``): a list of condition mappings, tried in order; the
   first mapping matched by an eligible series wins. Matching follows the SDK's
   ``DICOMSeriesSelectorOperator``: strings match case-insensitively or by ``re.search``; numbers
   by exact value, ``[min, max]`` range, ``[value, ">"|">="|"<"|"<="|"!="]`` or a regex on the
   text; multi-valued attributes (ImageType) by a list of required values, ``!value`` excluding;
   ``ImageOrientationPatient: Axial|Coronal|Sagittal`` by the slice normal. Venous is chosen first;
   the arterial phase never reuses the venous series, and a series matching only one phase's rules
   is preferred over one matching both. Ties: most slices, then lowest SeriesNumber, then UID.
3. *Timing fallback* (``fallback_on_timing``) for a phase the rules did not find, among eligible
   axial ``ORIGINAL``/``PRIMARY`` series: when some candidates carry ContrastBolusAgent, those
   without it are dropped (likely non-contrast). Candidates are ordered by AcquisitionTime (else
   SeriesTime, else ContentTime) and series within 10 s are taken as reconstructions of one
   acquisition. With neither phase known: the earliest acquisition is arterial, the next one
   venous (a single acquisition is taken as venous). With venous known: arterial is the latest
   acquisition before it. With arterial known: venous is the earliest one after it.
4. *Several studies* in the input: each study is assessed on its own; the chosen study is the one
   with both phases, else one with a venous phase; among those, the most recent (StudyDate/Time,
   else the latest acquisition), then the highest Study UID. The choice is logged.
5. *Policy*: no venous phase anywhere -> :class:`PhaseSelectionError` listing every series and why
   it was refused. Venous but no arterial phase -> error naming the missing arterial phase when
   ``phase_policy.missing_arterial`` is ``error`` (default); with ``single_phase`` the selection
   has ``arterial=None`` and ``single_phase=True``.
6. *Checks on the chosen series*, still before any pixel is decoded: both belong to one patient
   (different PatientIDs -> error naming both series, never the IDs), and their headers hold
   everything the SEG/SR/PDF will reference (:func:`lnmet.dicom_io.check_output_references`). A
   series whose RescaleSlope cannot give HU is refused in step 1.

Messages say what the headers hold: a series chosen by timing alone is "the only CT acquisition
... used as the venous phase" with what its headers say about contrast and body part (a head CT
is not called portal-venous); series acquired at the same time are said to be one acquisition.
Errors state the whole problem on their first line; the series considered follow on the next lines.
"""

from __future__ import annotations

import logging
import numbers
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

import numpy as np
from pydicom.multival import MultiValue

from lnmet.config import Settings, load_settings
from lnmet.dicom_io import (
    CT_IMAGE_STORAGE,
    DicomSeries,
    DicomStudy,
    VolumeGeometryError,
    check_output_references,
    check_rescale,
    group_studies,
    plan_slices,
)
from lnmet.types import PhaseSelection, SeriesRef
from pydicom.uid import UID

log = logging.getLogger(__name__)

EXCLUDED_IMAGE_TYPES = frozenset({
    "LOCALIZER", "SCOUT", "TOPOGRAM", "DERIVED", "SECONDARY", "REFORMATTED", "MPR", "MIP", "MINIP",
    "PROJECTION IMAGE", "SCREEN SAVE", "SCREENSHOT", "CT_SOM5 TOP",
})
SAME_ACQUISITION_S = 10.0  # series whose acquisition times differ less than this: one acquisition
PHASES = ("arterial", "venous")


class PhaseSelectionError(ValueError):
    """No usable phase (or a required phase missing); the message lists what was refused and why."""


# ---------------------------------------------------------------------------------------------
# Eligibility
# ---------------------------------------------------------------------------------------------


@dataclass
class Assessment:
    """What phase selection knows about one series."""

    series: DicomSeries
    eligible: bool
    refusal: str = ""  # why not eligible
    num_slices: int = 0
    axial: bool = False
    original_primary: bool = False
    contrast: bool | None = None  # ContrastBolusAgent present (None: attribute absent)
    time: datetime | None = None
    time_source: str = ""

    @property
    def label(self) -> str:
        return self.series.label()


def _orientation_axis(series: DicomSeries) -> str | None:
    iop = series.first.orientation
    if iop is None:
        return None
    normal = np.cross(np.array(iop[:3]), np.array(iop[3:6]))
    if np.linalg.norm(normal) == 0:
        return None
    return ("Sagittal", "Coronal", "Axial")[int(np.argmax(np.abs(normal)))]


def _contrast(series: DicomSeries) -> bool | None:
    agent = series.get("ContrastBolusAgent", None)
    seq = series.get("ContrastBolusAgentSequence", None)
    if (agent is None or str(agent).strip() == "") and not seq:
        return False if ("ContrastBolusAgent" in series.first.dataset or seq is not None) else None
    return True


def assess_series(series: DicomSeries, min_slices: int) -> Assessment:
    """Decide whether a series can be a contrast phase (see the module docstring, step 1)."""
    a = Assessment(series=series, eligible=False)
    if series.modality != "CT":
        a.refusal = f"modality {series.modality or '<none>'}, not CT"
        return a
    if not series.sop_class_uid:
        a.refusal = ("SOPClassUID is empty or missing in the data set and in the file meta "
                     "(MediaStorageSOPClassUID): what the files hold cannot be told, so nothing can reference them")
        return a
    if series.sop_class_uid != CT_IMAGE_STORAGE:
        name = UID(series.sop_class_uid).name
        if "Enhanced CT" in name or "Legacy Converted" in name:
            a.refusal = f"{name} (multi-frame) is not supported; export the series as single-frame CT Image Storage"
        else:
            a.refusal = f"SOP class {name}, not a CT image volume"
        return a
    if any(i.number_of_frames > 1 for i in series.instances):
        a.refusal = "multi-frame images, not a stack of slices"
        return a
    image_type = series.image_type
    bad = [v for v in image_type if v in EXCLUDED_IMAGE_TYPES]
    if bad:
        a.refusal = f"ImageType {'/'.join(image_type)} marks a {bad[0].lower()} series"
        return a
    a.original_primary = len(image_type) >= 2 and image_type[0] == "ORIGINAL" and image_type[1] == "PRIMARY"
    a.axial = _orientation_axis(series) == "Axial"
    a.contrast = _contrast(series)
    for source, value in (("AcquisitionTime", series.acquisition_datetime), ("SeriesTime", series.series_datetime),
                          ("ContentTime", series.content_datetime)):
        if value is not None:
            a.time, a.time_source = value, source
            break
    if series.num_instances < min_slices:
        a.refusal = f"{series.num_instances} slice(s), fewer than series_selection.min_slices ({min_slices})"
        return a
    bad_rescale = check_rescale(series)
    if bad_rescale:
        a.refusal = bad_rescale
        return a
    try:
        plan = plan_slices(series)
    except VolumeGeometryError as exc:
        a.refusal = f"not a regular volume: {exc}"
        return a
    a.num_slices = len(plan.instances)
    if a.num_slices < min_slices:
        a.refusal = f"{a.num_slices} distinct slice position(s), fewer than series_selection.min_slices ({min_slices})"
        return a
    a.eligible = True
    return a


# ---------------------------------------------------------------------------------------------
# Rule matching (semantics of the SDK's DICOMSeriesSelectorOperator)
# ---------------------------------------------------------------------------------------------


def _match_numeric(cond: Any, value: float) -> bool:
    if isinstance(cond, list):
        if len(cond) == 2 and isinstance(cond[1], str):
            ref, op = float(cond[0]), cond[1]
            ops = {">": value > ref, ">=": value >= ref, "<": value < ref, "<=": value <= ref, "!=": value != ref}
            if op not in ops:
                raise ValueError(f"unsupported relational operator {op!r} (expected one of {', '.join(ops)})")
            return ops[op]
        if len(cond) == 2 and all(isinstance(v, (int, float)) for v in cond):
            return cond[0] <= value <= cond[1]
        raise ValueError(f"unsupported numeric condition {cond!r}")
    if isinstance(cond, str):
        return re.fullmatch(cond, f"{value:g}") is not None or re.fullmatch(cond, str(value)) is not None
    if isinstance(cond, (int, float)):
        return float(cond) == value
    raise ValueError(f"unsupported numeric condition {cond!r}")


def match_condition(series: DicomSeries, keyword: str, cond: Any) -> bool:
    """One attribute condition of a rule against a series (first instance's header)."""
    if cond is None or cond == "" or cond == []:
        return True  # the SDK ignores empty conditions
    if keyword == "ImageOrientationPatient" and isinstance(cond, str):
        return (_orientation_axis(series) or "").lower() == cond.strip().lower()
    value = series.get(keyword, None)
    if value is None or value == "":
        return False
    if isinstance(value, (MultiValue, list, tuple)):
        values = {str(v).strip().lower() for v in value}
        terms = cond if isinstance(cond, list) else [cond]
        for term in terms:
            t = str(term).strip().lower()
            if t.startswith("!"):
                if t[1:] in values:
                    return False
            elif t not in values:
                return False
        return True
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return _match_numeric(cond, float(value))
    text = str(value)
    if isinstance(cond, str):
        return text.casefold() == cond.casefold() or re.search(cond, text, re.IGNORECASE) is not None
    if isinstance(cond, list):
        return text.lower() in {str(c).lower() for c in cond}
    return text == str(cond)


def match_rules(series: DicomSeries, rules: Sequence[dict[str, Any]]) -> int | None:
    """Index of the first rule (condition mapping) the series matches, else None."""
    for i, rule in enumerate(rules):
        if all(match_condition(series, k, v) for k, v in rule.items()):
            return i
    return None


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyChoice:
    study: DicomStudy
    venous: Assessment | None = None
    arterial: Assessment | None = None
    venous_reason: str = ""
    arterial_reason: str = ""
    log: list[str] = field(default_factory=list)


def _tie_key(a: Assessment) -> tuple:
    number = a.series.series_number
    return (-a.num_slices, number if number is not None else 1 << 30, a.series.series_uid)


def _tm(a: Assessment) -> str:
    return f"{a.time_source} {a.time.strftime('%H:%M:%S')}" if a.time else "no acquisition time"


def _contrast_text(a: Assessment) -> str:
    """What the headers say about contrast (and the body part), without guessing."""
    text = {True: "contrast declared (ContrastBolusAgent)", False: "no contrast declared (ContrastBolusAgent empty)",
            None: "contrast unknown (no ContrastBolusAgent)"}[a.contrast]
    part = str(a.series.get("BodyPartExamined", "") or "").strip()
    return text + (f", BodyPartExamined {part}" if part else "")


def _acquisitions(cands: list[Assessment]) -> list[list[Assessment]]:
    """Group timed candidates into acquisitions (series within SAME_ACQUISITION_S), in time order."""
    timed = sorted((c for c in cands if c.time is not None), key=lambda c: c.time)
    groups: list[list[Assessment]] = []
    for c in timed:
        if groups and (c.time - groups[-1][0].time) <= timedelta(seconds=SAME_ACQUISITION_S):
            groups[-1].append(c)
        else:
            groups.append([c])
    return [sorted(g, key=_tie_key) for g in groups]


def select_in_study(study: DicomStudy, settings: Settings) -> StudyChoice:
    """Choose the venous and arterial series of one study (either may be None)."""
    sel = settings.series_selection
    choice = StudyChoice(study=study)
    out = choice.log
    out.append(f"study {study.study_uid}: {len(study.series)} series")
    assessed = [assess_series(s, sel.min_slices) for s in study.series]
    eligible = []
    for a in assessed:
        if a.eligible:
            eligible.append(a)
            out.append(f"  candidate {a.label}: {a.num_slices} slices, "
                       f"{'axial' if a.axial else (_orientation_axis(a.series) or 'unknown').lower()}, "
                       f"ImageType {'/'.join(a.series.image_type) or '<none>'}, "
                       f"contrast {'yes' if a.contrast else ('no' if a.contrast is False else 'unknown')}, {_tm(a)}")
        else:
            out.append(f"  refused {a.label}: {a.refusal}")

    # Rules.
    matches: dict[str, dict[int, int]] = {p: {} for p in PHASES}  # phase -> id(assessment) -> rule index
    for a in eligible:
        for phase in PHASES:
            idx = match_rules(a.series, sel.rules.get(phase, []))
            if idx is not None:
                matches[phase][id(a)] = idx

    def by_rule(phase: str, exclude: Assessment | None) -> Assessment | None:
        other = "arterial" if phase == "venous" else "venous"
        cands = [a for a in eligible if id(a) in matches[phase] and a is not exclude]
        if not cands:
            return None
        return min(cands, key=lambda a: (matches[phase][id(a)], id(a) in matches[other], *_tie_key(a)))

    ven = by_rule("venous", None)
    if ven is not None:
        choice.venous = ven
        rule = sel.rules["venous"][matches["venous"][id(ven)]]
        choice.venous_reason = (f"rule series_selection.rules.venous[{matches['venous'][id(ven)]}] "
                                f"{_rule_text(rule)} matched")
    art = by_rule("arterial", ven)
    if art is not None:
        choice.arterial = art
        rule = sel.rules["arterial"][matches["arterial"][id(art)]]
        choice.arterial_reason = (f"rule series_selection.rules.arterial[{matches['arterial'][id(art)]}] "
                                  f"{_rule_text(rule)} matched")

    # Timing fallback.
    if (choice.venous is None or choice.arterial is None) and sel.fallback_on_timing:
        pool = [a for a in eligible if a.axial and a.original_primary
                and a is not choice.venous and a is not choice.arterial]
        for a in eligible:
            if a not in pool and a is not choice.venous and a is not choice.arterial:
                out.append(f"  not a timing-fallback candidate {a.label}: "
                           + ("not axial" if not a.axial else "ImageType is not ORIGINAL/PRIMARY"))
        known = [a for a in (choice.venous, choice.arterial) if a is not None]
        if any(a.contrast for a in pool + known):
            for a in [a for a in pool if not a.contrast]:
                out.append(f"  not a timing-fallback candidate {a.label}: no ContrastBolusAgent while other series "
                           "have one (likely non-contrast)")
            pool = [a for a in pool if a.contrast]
        untimed = [a for a in pool if a.time is None]
        if len(pool) == 1 and untimed and choice.venous is None and choice.arterial is None:
            # A lone candidate needs no ordering: it is the only acquisition, whatever its time.
            choice.venous = untimed[0]
            choice.venous_reason = (f"timing fallback: the only candidate series (no AcquisitionTime/SeriesTime/"
                                    f"ContentTime; {_contrast_text(untimed[0])}), used as the venous phase: which "
                                    "phase it is cannot be told from its headers")
            untimed = []
        for a in untimed:
            out.append(f"  not a timing-fallback candidate {a.label}: no AcquisitionTime/SeriesTime/ContentTime "
                       "to order it by")
        acqs = _acquisitions([a for a in pool if a is not choice.venous])
        note = f"{len(acqs)} acquisition(s) by time" if acqs else ""
        for g in acqs:
            if len(g) > 1:
                out.append(f"  {len(g)} series acquired within {SAME_ACQUISITION_S:g} s of each other ({_tm(g[0])}) "
                           f"are taken as reconstructions of one acquisition: {', '.join(a.label for a in g)}")
        if choice.venous is None and choice.arterial is None:
            if len(acqs) >= 2:
                choice.arterial, choice.venous = acqs[0][0], acqs[1][0]
                choice.arterial_reason = f"timing fallback: earliest of {note} ({_tm(choice.arterial)})"
                choice.venous_reason = f"timing fallback: second of {note} ({_tm(choice.venous)})"
                for g in acqs[2:]:
                    out.append(f"  later acquisition ignored (delayed phase?): {g[0].label} ({_tm(g[0])})")
            elif len(acqs) == 1:
                choice.venous = acqs[0][0]
                same = (f"; {len(acqs[0])} series share this acquisition time (one acquisition)"
                        if len(acqs[0]) > 1 else "")
                choice.venous_reason = (f"timing fallback: the only CT acquisition among the candidates "
                                        f"({_tm(choice.venous)}; {_contrast_text(choice.venous)}{same}), used as "
                                        "the venous phase: which phase it is cannot be told from its headers")
        elif choice.arterial is None and choice.venous is not None:
            if choice.venous.time is None:
                out.append("  arterial timing fallback impossible: the venous series has no acquisition time")
            else:
                before = [g for g in acqs if g[0].time < choice.venous.time
                          and (choice.venous.time - g[0].time) > timedelta(seconds=SAME_ACQUISITION_S)]
                if before:
                    choice.arterial = before[-1][0]
                    choice.arterial_reason = (f"timing fallback: latest acquisition before the venous series "
                                              f"({_tm(choice.arterial)} < {_tm(choice.venous)})")
        elif choice.venous is None and choice.arterial is not None:
            if choice.arterial.time is None:
                out.append("  venous timing fallback impossible: the arterial series has no acquisition time")
            else:
                after = [g for g in acqs if g[0].time > choice.arterial.time
                         and (g[0].time - choice.arterial.time) > timedelta(seconds=SAME_ACQUISITION_S)]
                if after:
                    choice.venous = after[0][0]
                    choice.venous_reason = (f"timing fallback: earliest acquisition after the arterial series "
                                            f"({_tm(choice.venous)} > {_tm(choice.arterial)})")

    # Add how ties were broken to the reasons.
    for phase in PHASES:
        a = getattr(choice, phase)
        if a is None:
            out.append(f"  {phase}: none found")
            continue
        reason = getattr(choice, f"{phase}_reason") + f"; {a.num_slices} slices, {_tm(a)}"
        setattr(choice, f"{phase}_reason", reason)
        out.append(f"  {phase}: {a.label} - {reason}")
    if (choice.venous and choice.arterial and choice.venous.time and choice.arterial.time
            and choice.arterial.time > choice.venous.time):
        msg = (f"  warning: the arterial series was acquired after the venous one ({_tm(choice.arterial)} > "
               f"{_tm(choice.venous)}); check series_selection.rules")
        out.append(msg)
        log.warning(msg.strip())
    return choice


def _rule_text(rule: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in rule.items()) + "}"


def _phase_ref(phase: str, a: Assessment, reason: str) -> SeriesRef:
    s = a.series
    return SeriesRef(
        phase=phase,
        study_instance_uid=s.study_uid,
        series_instance_uid=s.series_uid,
        series_description=s.description,
        series_number=s.series_number,
        modality=s.modality,
        acquisition_time=s.acquisition_time_tm,
        num_slices=a.num_slices,
        reason=reason,
        derived_attributes=[d.as_dict() for d in s.derived],
    )


def _patient_ids(series: DicomSeries) -> set[str]:
    """The non-empty PatientID values of a series' instances (compared, never logged)."""
    return {str(i.get("PatientID", "") or "").strip() for i in series.instances} - {""}


def check_same_patient(venous: DicomSeries, arterial: DicomSeries | None) -> None:
    """Refuse series whose instances carry different PatientIDs: the arterial phase of one patient
    with the venous phase of another must never be analysed as one patient. The message names the
    series and never the IDs."""
    for s in (venous, arterial):
        if s is not None and len(_patient_ids(s)) > 1:
            raise PhaseSelectionError(
                f"the instances of {s.label()} carry {len(_patient_ids(s))} different PatientID values (not shown): "
                "they belong to different patients; refusing to analyse them as one")
    if arterial is not None:
        ven, art = _patient_ids(venous), _patient_ids(arterial)
        if ven and art and ven != art:
            raise PhaseSelectionError(
                f"the arterial series ({arterial.label()}) and the venous series ({venous.label()}) have different "
                "PatientID values (not shown): they belong to different patients; refusing to analyse them as one "
                "patient")


def _why_not(choices: Sequence[StudyChoice]) -> str:
    """The reasons CT series were refused or could not be ordered, in brief (for the first line)."""
    reasons = [line.strip() for c in choices for line in c.log
               if (line.startswith("  refused ") and "modality " not in line) or "timing-fallback candidate" in line]
    if not reasons:
        return ""
    shown = "; ".join(r[:300] for r in reasons[:3])
    return f": {shown}" + (f"; ... ({len(reasons)} in all)" if len(reasons) > 3 else "")


def select_phases(series: Sequence[DicomSeries], settings: Settings | None = None) -> PhaseSelection:
    """Choose the study and its venous (and arterial) series among all loaded series.

    Errors (:class:`PhaseSelectionError`): the first line of the message says what is wrong in
    full; the lines after it list every series considered and why (what the app logs before its
    final ``ERROR:`` line)."""
    settings = settings or load_settings()
    if not series:
        raise PhaseSelectionError("no DICOM series in the input: nothing to select a phase from")
    studies = group_studies(series)
    choices = [select_in_study(st, settings) for st in studies]
    lines: list[str] = []
    patients = {str(s.get("PatientID", "") or "") for s in series} - {""}
    if len(patients) > 1:
        lines.append(f"warning: the input holds studies of {len(patients)} different patients; one study is processed")

    def rank(c: StudyChoice) -> tuple:
        dt = c.study.study_datetime or datetime.min
        return (c.venous is not None and c.arterial is not None, c.venous is not None, dt, c.study.study_uid)

    usable = [c for c in choices if c.venous is not None]
    for c in choices:
        lines.extend(c.log)
    if not usable:
        lines.append("no study has a series usable as the venous phase")
        raise PhaseSelectionError(
            f"no usable CT phase found in the input ({len(series)} series in {len(studies)} study(ies))"
            f"{_why_not(choices)}\nevery series considered and why:\n" + "\n".join(lines))
    chosen = max(usable, key=rank)
    if len(studies) > 1:
        both = chosen.arterial is not None
        when = chosen.study.study_datetime
        lines.append(f"{len(studies)} studies in the input; chose study {chosen.study.study_uid}"
                     + (f" ({when:%Y-%m-%d %H:%M})" if when else "")
                     + (": the most recent study with both phases" if both else
                        ": no study has both phases; the most recent study with a series usable as venous"))
    assert chosen.venous is not None
    single = False
    if chosen.arterial is None:
        if settings.missing_arterial == "error":
            lines.append("no arterial phase: stopping (phase_policy.missing_arterial: error)")
            by_rule = chosen.venous_reason.startswith("rule ")
            what = (f"a portal-venous phase ({chosen.venous.label}, matched by series_selection.rules)" if by_rule
                    else f"one CT acquisition usable as a phase ({chosen.venous.label}; {_contrast_text(chosen.venous)})")
            raise PhaseSelectionError(
                f"study {chosen.study.study_uid} has {what} but no arterial (pancreatic) phase: the method needs an "
                "arterial and a portal-venous phase. To run on that series alone set phase_policy.missing_arterial: "
                "single_phase in app.yaml\nevery series considered and why:\n" + "\n".join(lines))
        single = True
        lines.append("no arterial phase: running single-phase on the venous series "
                     "(phase_policy.missing_arterial: single_phase)")
    check_same_patient(chosen.venous.series, chosen.arterial.series if chosen.arterial else None)
    for a in (chosen.venous, chosen.arterial):
        if a is not None:
            check_output_references(a.series)  # at intake: what the SEG/SR/PDF will need from the headers
    venous_ref = _phase_ref("venous", chosen.venous, chosen.venous_reason)
    arterial_ref = _phase_ref("arterial", chosen.arterial, chosen.arterial_reason) if chosen.arterial else None
    for line in lines:
        log.info(line)
    return PhaseSelection(
        venous=chosen.venous.series,
        arterial=chosen.arterial.series if chosen.arterial else None,
        venous_ref=venous_ref,
        arterial_ref=arterial_ref,
        single_phase=single,
        log=lines,
    )


# ---------------------------------------------------------------------------------------------
# Operator
# ---------------------------------------------------------------------------------------------

try:
    from monai.deploy.core import Fragment, Operator, OperatorSpec
except ImportError:  # pragma: no cover - the SDK is a pinned requirement
    Operator = object  # type: ignore[assignment,misc]


class PhaseSelectorOperator(Operator):
    """Selects the venous and arterial series (see the module docstring).

    Input ``dicom_series``: ``list[DicomSeries]``. Output ``phase_selection``: ``PhaseSelection``."""

    def __init__(self, fragment: "Fragment", *args, settings: Settings | None = None, **kwargs):
        self._settings = settings or load_settings()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: "OperatorSpec") -> None:
        spec.input("dicom_series")
        spec.output("phase_selection")

    def compute(self, op_input, op_output, context) -> None:
        series = op_input.receive("dicom_series")
        op_output.emit(select_phases(series, self._settings), "phase_selection")
