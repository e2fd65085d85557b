"""DICOM intake: scan a folder, group files into studies/series, decode pixels, build volumes.

Pure functions (no Holoscan), used by the StudyLoader and SeriesToVolume operators.

Why not the SDK's ``DICOMDataLoaderOperator`` (monai-deploy-app-sdk 4.0.0)?
It serves well for clean single-study folders, but for this product it falls short:

- it reads every file *with* pixel data (``dcmread`` without ``stop_before_pixels``): a folder
  with several studies keeps every decoded-or-not pixel buffer in memory, although only two
  series are ever used;
- it groups by ``StudyInstanceUID``/``SeriesInstanceUID`` through ``.value.name``; files whose
  UIDs are *empty* (as in real exports, e.g. the Siemens J2K abdomen sample) raise inside a broad
  ``except`` and are silently dropped, or merged into one group when the UID is the same empty
  string;
- non-DICOM files other than ``InvalidDicomError`` (permission errors, truncated files) stop the
  whole load, and skipped files are not counted;
- duplicate slices are resolved by ``AcquisitionNumber`` only, and nothing checks gaps, tilt or
  mixed geometry.

So this module replaces it: headers are read lazily (``stop_before_pixels``), unreadable files are
skipped and counted, and identifiers that anonymisers leave empty are completed at intake, so that
every output can reference the source (a user who exported a series without UIDs expects it to
load, not to vanish, and not to fail in the output stage after minutes of work):

- SOP Instance / SOP Class UID: from the file meta (Media Storage SOP Instance / Class UID); a SOP
  Instance UID empty there too is derived from the file content (SHA-256 of the pixel data with
  the position, orientation and instance number). A SOP Class UID empty in both is not guessed:
  the series is refused, naming the attribute;
- Series Instance UID: files without one are grouped by folder + frame of reference + description
  + series number + orientation + matrix + pixel spacing + series time, and the series gets a UID
  derived from its SOP Instance UIDs;
- Study Instance UID: series without one are grouped by patient ID, study date/time, study ID and
  accession number (not by folder: the phases often lie in separate folders), and the study gets a
  UID derived from its series' UIDs;
- Frame of Reference UID: from the other instances of the series when they share one, else derived
  from the Series Instance UID (one frame of reference per series: nothing says two series without
  one share it).

Derived UIDs are deterministic (pydicom ``generate_uid`` with the content as entropy): the same
files give the same UIDs in every run and wherever they lie. They are written into the in-memory
headers that the output builders use (``PhaseVolume.source_headers``), listed per series
(:attr:`DicomSeries.derived`) and reported in results.json, the SR and the PDF.
:func:`check_output_references` checks, at intake, everything the outputs need from the chosen
series' headers.

Pixel data are decoded with pydicom and its plugins (pylibjpeg, openjpeg, RLE, JPEG-LS). For the
transfer syntaxes none of them decodes (JPEG spectral selection/progressive, processes 6-8 and
10-12, ``.53``/``.55``) SimpleITK's GDCM reader is tried as a second decoder; when both fail, the
error names the file and the transfer syntax (UID and name).

Volumes (:func:`build_volume`) are built from ``ImagePositionPatient``/``ImageOrientationPatient``:
slices sorted along the slice normal, spacing from the positions (not ``SliceThickness``), origin
from the first slice, direction from the orientation cosines (so coronal/sagittal series work),
rescale slope/intercept applied per slice, float32 HU. Decisions:

- duplicate slices (same position): the one with the highest ``InstanceNumber`` is kept, ties
  broken by the numerically highest ``SOPInstanceUID``; the choice goes to the notes and the log;
- missing slices (a step larger than 1.5 x the series' median step) and irregular steps: error,
  naming the series, the positions and the gap. There is deliberately no setting to interpolate
  across a gap: a missing slice can hold a lymph node, and invented anatomy would be reported as
  if it had been imaged;
- gantry tilt (slices not stacked along the normal of their plane): error naming the angle;
- multi-frame images (Enhanced CT, legacy converted): refused with an error saying so.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale
from pydicom.uid import UID, generate_uid

from lnmet.progress import Progress

log = logging.getLogger(__name__)

# SOP classes the loader knows by name (for logs and phase selection).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

# Tolerances of the geometry checks.
ORIENTATION_TOL = 1e-4  # difference between direction cosines of two slices
DUPLICATE_TOL_MM = 1e-3  # two slices closer than this along the normal are the same position
GAP_FACTOR = 1.5  # a step larger than this x the median step is a gap (missing slices)
IRREGULAR_REL_TOL = 0.05  # steps may differ from the median by this fraction ...
IRREGULAR_ABS_TOL_MM = 0.01  # ... or by this many mm, whichever is larger
TILT_TOL_DEG = 0.5  # slices stacked off the plane normal by more than this: gantry tilt


class DicomInputError(ValueError):
    """The DICOM input cannot be used; the message names the file/series and what was expected."""


class DicomDecodeError(DicomInputError):
    """Pixel data of a file cannot be decoded (the message names the transfer syntax)."""


class VolumeGeometryError(DicomInputError):
    """A series does not form a regular volume (gaps, tilt, mixed geometry, too few slices)."""


# ---------------------------------------------------------------------------------------------
# Headers, series, studies
# ---------------------------------------------------------------------------------------------


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip()


def _float_list(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        seq = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else [value]
        return tuple(float(v) for v in seq)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_da_tm(date: str | None, time: str | None) -> datetime | None:
    """DICOM DA + TM (``YYYYMMDD`` and ``HHMMSS.FFFFFF``, colons tolerated) to a datetime.

    Without a date, the time is placed on 1900-01-01 so that times of one day still order."""
    t = (time or "").replace(":", "").strip()
    if not t:
        return None
    try:
        hh = int(t[0:2])
        mm = int(t[2:4]) if len(t) >= 4 else 0
        ss = float(t[4:]) if len(t) > 4 else 0.0
        d = (date or "").strip()
        base = datetime.strptime(d[:8], "%Y%m%d") if len(d) >= 8 else datetime(1900, 1, 1)
        return base.replace(hour=hh, minute=mm, second=int(ss), microsecond=int(round((ss % 1) * 1e6)) % 1000000)
    except (ValueError, TypeError):
        return None


@dataclass
class InstanceHeader:
    """One DICOM file, header only (read with ``stop_before_pixels``)."""

    path: str
    dataset: Dataset  # header without pixel data
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str  # "" when the file has none
    series_uid: str
    modality: str
    instance_number: int | None
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 values)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    rows: int | None
    columns: int | None
    number_of_frames: int
    forced: bool = False  # read without a DICOM preamble/file meta
    derived: dict[str, str] = field(default_factory=dict)  # keyword -> where the value came from

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.dataset.get(keyword, default)

    @property
    def acquisition_datetime(self) -> datetime | None:
        adt = _str(self.dataset, "AcquisitionDateTime")
        if len(adt) >= 14:
            dt = parse_da_tm(adt[:8], adt[8:].split("+")[0].split("-")[0])
            if dt is not None:
                return dt
        return parse_da_tm(_str(self.dataset, "AcquisitionDate") or _str(self.dataset, "SeriesDate")
                           or _str(self.dataset, "StudyDate"), _str(self.dataset, "AcquisitionTime"))


@dataclass(frozen=True)
class DerivedAttribute:
    """An identifier the files lacked and the loader completed (reported in every output)."""

    attribute: str  # DICOM keyword, e.g. "SeriesInstanceUID"
    source: str  # where the value came from, in words
    value: str | None  # the value when the whole series shares it; None for per-instance values
    instances: int  # how many instances of the series got it

    def text(self) -> str:
        """``SeriesInstanceUID 1.2.3 (derived from ...; 20 instances)``."""
        value = f" {self.value}" if self.value else ""
        return f"{self.attribute}{value} ({self.source}; {self.instances} instance(s))"

    def as_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "source": self.source, "value": self.value,
                "instances": self.instances}


@dataclass
class DicomSeries:
    """The instances of one series (all files sharing Study and Series Instance UID)."""

    study_uid: str
    series_uid: str
    instances: list[InstanceHeader]
    notes: list[str] = field(default_factory=list)
    derived: list[DerivedAttribute] = field(default_factory=list)  # identifiers completed by the loader

    @property
    def uids_synthesized(self) -> bool:
        """True when the Study or Series Instance UID was derived by the loader (the files had none)."""
        return any(d.attribute in ("StudyInstanceUID", "SeriesInstanceUID") for d in self.derived)

    @property
    def first(self) -> InstanceHeader:
        return self.instances[0]

    def get(self, keyword: str, default: Any = None) -> Any:
        """An attribute of the series' first instance (series-level attributes are shared)."""
        return self.first.get(keyword, default)

    @property
    def modality(self) -> str:
        return self.first.modality

    @property
    def description(self) -> str:
        return _str(self.first.dataset, "SeriesDescription")

    @property
    def series_number(self) -> int | None:
        return _int(self.first.dataset, "SeriesNumber")

    @property
    def sop_class_uid(self) -> str:
        return self.first.sop_class_uid

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self.first.dataset.get("ImageType", None)
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            return tuple(v.strip().upper() for v in value.split("\\"))
        return tuple(str(v).strip().upper() for v in value)

    @property
    def num_instances(self) -> int:
        return len(self.instances)

    @property
    def num_frames(self) -> int:
        return sum(i.number_of_frames for i in self.instances)

    @property
    def folder(self) -> str:
        return str(Path(self.first.path).parent)

    @property
    def acquisition_datetime(self) -> datetime | None:
        """Earliest acquisition time of the series' instances (None when no instance has one)."""
        times = [t for t in (i.acquisition_datetime for i in self.instances) if t is not None]
        return min(times) if times else None

    @property
    def series_datetime(self) -> datetime | None:
        ds = self.first.dataset
        return parse_da_tm(_str(ds, "SeriesDate") or _str(ds, "StudyDate"), _str(ds, "SeriesTime"))

    @property
    def content_datetime(self) -> datetime | None:
        times = [parse_da_tm(_str(i.dataset, "ContentDate") or _str(i.dataset, "SeriesDate"),
                             _str(i.dataset, "ContentTime")) for i in self.instances]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    @property
    def acquisition_time_tm(self) -> str | None:
        """AcquisitionTime of the earliest instance as in the header, else SeriesTime (DICOM TM)."""
        best: tuple[datetime, str] | None = None
        for inst in self.instances:
            tm = _str(inst.dataset, "AcquisitionTime")
            dt = inst.acquisition_datetime
            if tm and dt is not None and (best is None or dt < best[0]):
                best = (dt, tm)
        if best is not None:
            return best[1]
        return _str(self.first.dataset, "SeriesTime") or None

    def label(self) -> str:
        """How the series is named in logs and errors (no patient identifiers)."""
        number = self.series_number
        desc = self.description or "<no description>"
        if len(desc) > 80:  # descriptions are LO (64 characters); do not let a broken one flood the log
            desc = desc[:77] + "..."
        return (f"series {number if number is not None else '<no SeriesNumber>'} '{desc}' "
                f"(UID {self.series_uid or '<empty>'})")


@dataclass
class DicomStudy:
    """The series of one study."""

    study_uid: str
    series: list[DicomSeries]

    @property
    def study_datetime(self) -> datetime | None:
        ds = self.series[0].first.dataset
        dt = parse_da_tm(_str(ds, "StudyDate"), _str(ds, "StudyTime"))
        if dt is not None and _str(ds, "StudyDate"):
            return dt
        times = [s.acquisition_datetime or s.series_datetime for s in self.series]
        times = [t for t in times if t is not None]
        return max(times) if times else dt


@dataclass
class ScanResult:
    """What :func:`scan_folder` found."""

    root: str
    series: list[DicomSeries]
    files_seen: int
    skipped: list[tuple[str, str]]  # (path, reason)

    @property
    def studies(self) -> list[DicomStudy]:
        return group_studies(self.series)


def list_files(root: str | os.PathLike) -> list[str]:
    """All regular files under ``root`` (recursively), in a deterministic order."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(os.path.join(dirpath, name))
    return out


def read_header(path: str) -> InstanceHeader:
    """Read one file's header (no pixel data). Raises ``InvalidDicomError``/``OSError`` for files
    that are not DICOM; files without preamble are accepted when they look like an image header."""
    forced = False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        with warnings.catch_warnings():  # forced parsing of a non-DICOM file warns about its "VRs"
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if not (_str(ds, "SOPClassUID") or _str(ds, "SOPInstanceUID")) or not _str(ds, "Modality"):
            raise InvalidDicomError("no DICOM preamble and no SOP Class/Instance UID and Modality") from None
        forced = True
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows")):
        raise InvalidDicomError("no SOP Class/Instance UID, Modality or Rows in the data set (truncated file?)")
    meta = getattr(ds, "file_meta", None)
    ts = _str(meta, "TransferSyntaxUID") if meta is not None else ""
    if not ts:
        ts = IMPLICIT_VR_LITTLE_ENDIAN if ds.is_implicit_VR in (True, None) else "1.2.840.10008.1.2.1"
    derived: dict[str, str] = {}
    sop_class, sop_inst = _str(ds, "SOPClassUID"), _str(ds, "SOPInstanceUID")
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if _str(ds, keyword) or meta is None or not _str(meta, meta_keyword):
            continue
        setattr(ds, keyword, _str(meta, meta_keyword))  # the in-memory header the outputs reference
        derived[keyword] = f"from the file meta ({meta_keyword})"
    sop_class, sop_inst = _str(ds, "SOPClassUID") or sop_class, _str(ds, "SOPInstanceUID") or sop_inst
    ipp = _float_list(ds, "ImagePositionPatient")
    iop = _float_list(ds, "ImageOrientationPatient")
    ps = _float_list(ds, "PixelSpacing")
    return InstanceHeader(
        path=path,
        dataset=ds,
        transfer_syntax_uid=ts,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_inst,
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        modality=_str(ds, "Modality").upper(),
        instance_number=_int(ds, "InstanceNumber"),
        position=tuple(ipp[:3]) if ipp is not None and len(ipp) >= 3 else None,  # type: ignore[arg-type]
        orientation=tuple(iop[:6]) if iop is not None and len(iop) >= 6 else None,
        pixel_spacing=(ps[0], ps[1]) if ps is not None and len(ps) >= 2 else None,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        forced=forced,
        derived=derived,
    )


def _geometry_key(h: InstanceHeader) -> tuple:
    """What files without a Series Instance UID must share to be one series."""
    iop = tuple(round(v, 3) for v in h.orientation) if h.orientation else None
    ps = tuple(round(v, 4) for v in h.pixel_spacing) if h.pixel_spacing else None
    return (
        str(Path(h.path).parent), _str(h.dataset, "FrameOfReferenceUID"), h.modality, h.sop_class_uid,
        _str(h.dataset, "SeriesDescription"), _str(h.dataset, "SeriesNumber"), iop, h.rows, h.columns, ps,
        _str(h.dataset, "SeriesDate"), _str(h.dataset, "SeriesTime"),
    )


def _study_key(h: InstanceHeader) -> tuple:
    """What series without a Study Instance UID must share to be one study (never logged: it holds
    the patient ID)."""
    return tuple(_str(h.dataset, k) for k in ("PatientID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"))


SOP_INSTANCE_FROM_CONTENT = ("derived from the file content (SHA-256 of the pixel data with the image position, "
                             "orientation and instance number)")


def _content_sop_instance_uid(h: InstanceHeader) -> str:
    """A SOP Instance UID derived from the file content (for files whose data set and file meta
    both lack one): the same file always gets the same UID, a different slice a different one."""
    digest = hashlib.sha256()
    try:
        ds = pydicom.dcmread(h.path, force=True)
        pixels = ds.get("PixelData", b"") or b""
    except Exception:  # noqa: BLE001 - unreadable pixel data: the decoder names the problem later
        pixels = b""
    digest.update(bytes(pixels))
    for part in (h.position, h.orientation, h.instance_number, h.rows, h.columns):
        digest.update(repr(part).encode())
    return str(generate_uid(entropy_srcs=["lnmet SOPInstanceUID", digest.hexdigest()]))


def _complete_instances(headers: Sequence[InstanceHeader]) -> None:
    """SOP Instance UIDs that neither the data set nor the file meta hold: derived from the content."""
    for h in headers:
        if not h.sop_instance_uid:
            h.sop_instance_uid = _content_sop_instance_uid(h)
            h.dataset.SOPInstanceUID = h.sop_instance_uid
            h.derived["SOPInstanceUID"] = SOP_INSTANCE_FROM_CONTENT


def _summarise_instance_fills(instances: Sequence[InstanceHeader]) -> list[DerivedAttribute]:
    """Per-instance fills (SOP Class/Instance UID) of a series, one entry per attribute and source."""
    counts: dict[tuple[str, str], list[str]] = {}
    for h in instances:
        for keyword, source in h.derived.items():
            value = h.sop_class_uid if keyword == "SOPClassUID" else h.sop_instance_uid
            counts.setdefault((keyword, source), []).append(value)
    out = []
    for (keyword, source), values in sorted(counts.items()):
        shared = values[0] if len(set(values)) == 1 and keyword == "SOPClassUID" else None
        out.append(DerivedAttribute(keyword, source, shared, len(values)))
    return out


def _set_all(instances: Sequence[InstanceHeader], keyword: str, value: str) -> None:
    for h in instances:
        setattr(h.dataset, keyword, value)


def _complete_frame_of_reference(s: DicomSeries) -> None:
    """Instances without a Frame of Reference UID: the series' own one when the others share it,
    else one derived from the Series Instance UID."""
    missing = [h for h in s.instances if not _str(h.dataset, "FrameOfReferenceUID")]
    if not missing:
        return
    present = {_str(h.dataset, "FrameOfReferenceUID") for h in s.instances} - {""}
    if len(present) == 1:
        value, source = present.pop(), "from the other instances of the series"
    elif not present:
        value = str(generate_uid(entropy_srcs=["lnmet FrameOfReferenceUID", s.series_uid]))
        source = "derived from the Series Instance UID (one frame of reference per series)"
    else:
        return  # several frames of reference in one series: plan_slices refuses mixed geometry anyway
    _set_all(missing, "FrameOfReferenceUID", value)
    s.derived.append(DerivedAttribute("FrameOfReferenceUID", source, value, len(missing)))


def group_series(headers: Iterable[InstanceHeader]) -> list[DicomSeries]:
    """Group instances into series by Study/Series Instance UID, completing empty identifiers.

    See the module docstring for how missing SOP Instance, Series, Study and Frame of Reference
    UIDs are completed; each completion is recorded in :attr:`DicomSeries.derived`, written into
    the instances' in-memory headers and logged (a warning per series)."""
    headers = list(headers)
    _complete_instances(headers)
    groups: dict[tuple, list[InstanceHeader]] = {}
    for h in headers:
        study = ("uid", h.study_uid) if h.study_uid else ("key", _study_key(h))
        series = ("uid", h.series_uid) if h.series_uid else ("geometry", _geometry_key(h))
        groups.setdefault((study, series), []).append(h)

    out: list[DicomSeries] = []
    derived_studies: dict[tuple, list[DicomSeries]] = {}
    for (study, series), inst in groups.items():
        s = DicomSeries(study_uid=study[1] if study[0] == "uid" else "", series_uid="", instances=inst)
        s.derived.extend(_summarise_instance_fills(inst))
        if series[0] == "uid":
            s.series_uid = series[1]
        else:
            s.series_uid = str(generate_uid(entropy_srcs=["lnmet SeriesInstanceUID",
                                                          *sorted(h.sop_instance_uid for h in inst)]))
            _set_all(inst, "SeriesInstanceUID", s.series_uid)
            for h in inst:
                h.series_uid = s.series_uid
            s.derived.append(DerivedAttribute(
                "SeriesInstanceUID", "derived from the series' SOP Instance UIDs (files grouped by folder, frame "
                "of reference, description, number, orientation, matrix, pixel spacing and series time)",
                s.series_uid, len(inst)))
        if study[0] != "uid":
            derived_studies.setdefault(study[1], []).append(s)
        out.append(s)
    for members in derived_studies.values():
        uid = str(generate_uid(entropy_srcs=["lnmet StudyInstanceUID", *sorted(m.series_uid for m in members)]))
        for m in members:
            m.study_uid = uid
            _set_all(m.instances, "StudyInstanceUID", uid)
            for h in m.instances:
                h.study_uid = uid
            m.derived.append(DerivedAttribute(
                "StudyInstanceUID", f"derived from the UIDs of the {len(members)} series that share the study's "
                "patient ID, date, time, ID and accession number", uid, len(m.instances)))
    for s in out:
        _complete_frame_of_reference(s)
        if s.derived:
            # Logged, not a note: the outputs report these in their own place (derived_attributes).
            log.warning("%d file(s) of %s lack identifiers, completed at intake: %s", len(s.instances), s.label(),
                        ", ".join(dict.fromkeys(d.attribute for d in s.derived)))
            for d in s.derived:
                log.info("%s: %s", s.label(), d.text())
    out.sort(key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return out


# Attributes the outputs copy from the venous source (Patient and General Study modules, Type 2
# in the CT Image IOD: present, possibly empty). highdicom reads them as attributes, so an absent one
# would fail in the output stage; at intake it is written empty into the in-memory headers.
TYPE2_COPIED_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "StudyID", "AccessionNumber", "ReferringPhysicianName")
OUTPUT_UID_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                         "FrameOfReferenceUID")


def check_output_references(series: DicomSeries) -> None:
    """Make sure, at intake, that the SEG, SR and PDF can reference ``series`` (a chosen phase).

    Raises :class:`DicomInputError` naming the series, the attribute and a file when an identifier
    the outputs reference is missing or malformed (UIDs: at most 64 characters, digits and dots),
    when instances at different positions share a SOP Instance UID, or when the instances mix SOP
    classes. Completes what the standard lets be empty: absent Type 2 patient/study attributes
    (:data:`TYPE2_COPIED_ATTRIBUTES`) are written empty and an absent or empty SliceThickness
    takes the spacing between slice positions; both are recorded in ``series.derived``."""
    label = series.label()
    for keyword in OUTPUT_UID_ATTRIBUTES:
        for h in series.instances:
            value = _str(h.dataset, keyword)
            if not value:
                raise DicomInputError(f"{label}: {keyword} is empty or missing in {h.path} and could not be derived; "
                                      "the SEG/SR/PDF outputs must reference it")
            if not UID(value).is_valid:
                raise DicomInputError(f"{label}: {keyword} {value[:80]!r} in {h.path} is not a valid DICOM UID "
                                      "(at most 64 characters, digits and dots); the outputs must reference it")
    classes = {h.sop_class_uid for h in series.instances}
    if len(classes) > 1:
        raise DicomInputError(f"{label}: its instances mix SOP classes ({', '.join(sorted(classes))}); "
                              "one class per series is expected")
    by_uid: dict[str, InstanceHeader] = {}
    for h in series.instances:
        other = by_uid.setdefault(h.sop_instance_uid, h)
        if other is not h and other.position != h.position:
            raise DicomInputError(
                f"{label}: SOPInstanceUID {h.sop_instance_uid} is shared by {other.path} and {h.path} at different "
                "positions; the outputs could not tell these slices apart")
    for keyword in TYPE2_COPIED_ATTRIBUTES:
        absent = [h for h in series.instances if keyword not in h.dataset]
        if absent:
            _set_all(absent, keyword, "")
            series.derived.append(DerivedAttribute(keyword, "absent; written empty (Type 2, the outputs copy it)",
                                                   None, len(absent)))
    thin = [h for h in series.instances if _float_list(h.dataset, "SliceThickness") is None]
    if thin:
        step = plan_slices(series).spacing[2]
        _set_all(thin, "SliceThickness", f"{step:.6g}")
        series.derived.append(DerivedAttribute("SliceThickness", "absent or empty; the spacing between slice "
                                               "positions", f"{step:.6g}", len(thin)))


def group_studies(series: Sequence[DicomSeries]) -> list[DicomStudy]:
    studies: dict[str, list[DicomSeries]] = {}
    for s in series:
        studies.setdefault(s.study_uid, []).append(s)
    return [DicomStudy(uid, lst) for uid, lst in studies.items()]


def scan_folder(root: str | os.PathLike) -> ScanResult:
    """Read the headers of every file under ``root`` and group them into series.

    Unreadable and non-DICOM files (and DICOMDIR) are skipped and counted in the log. Raises
    :class:`DicomInputError` when ``root`` is not a folder or holds no readable DICOM file."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DicomInputError(f"input folder not found or not a folder: {root_path}")
    files = list_files(root_path)
    headers: list[InstanceHeader] = []
    skipped: list[tuple[str, str]] = []
    for path in files:
        try:
            h = read_header(path)
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
            skipped.append((path, f"not readable as DICOM: {type(exc).__name__}: {str(exc)[:120]}"))
            continue
        if h.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            skipped.append((path, "DICOMDIR (media directory), not an instance"))
            continue
        headers.append(h)
    if skipped:
        log.warning("skipped %d of %d file(s) under %s that are not usable DICOM instances", len(skipped),
                    len(files), root_path)
        for path, reason in skipped[:20]:
            log.info("skipped %s: %s", path, reason)
    if not headers:
        raise DicomInputError(
            f"no readable DICOM file in {root_path} ({len(files)} file(s) found"
            + (f", {len(skipped)} skipped as not DICOM" if files else "") + ")"
        )
    series = group_series(headers)
    log.info("read %d DICOM header(s) under %s: %d series in %d study(ies)", len(headers), root_path, len(series),
             len({s.study_uid for s in series}))
    return ScanResult(root=str(root_path), series=series, files_seen=len(files), skipped=skipped)


# ---------------------------------------------------------------------------------------------
# Pixel data
# ---------------------------------------------------------------------------------------------


def transfer_syntax_label(uid: str) -> str:
    """``'1.2.840.10008.1.2.4.53 (JPEG Spectral Selection, ...)'``"""
    name = UID(uid).name if uid else "unknown"
    return f"{uid or '<none>'} ({name})"


def _rescale(raw: np.ndarray, ds: Dataset, frames: int) -> np.ndarray:
    """Apply the modality rescale: top-level RescaleSlope/Intercept, else (multi-frame Enhanced
    images) the per-frame or shared Pixel Value Transformation functional group."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or frames == 1:
        return apply_rescale(raw, ds).astype(np.float32, copy=False)
    out = raw.astype(np.float32)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    for f in range(frames):
        group = per_frame[f] if f < len(per_frame) and "PixelValueTransformationSequence" in per_frame[f] else shared
        if group is None or "PixelValueTransformationSequence" not in group:
            continue
        item = group.PixelValueTransformationSequence[0]
        out[f] = out[f] * float(item.get("RescaleSlope", 1.0)) + float(item.get("RescaleIntercept", 0.0))
    return out


def decode_frames_hu(path: str) -> np.ndarray:
    """Decode all frames of one image file to a float32 ``[frames, rows, columns]`` array with the
    rescale slope/intercept applied (HU for CT).

    pydicom (with its plugins) first; GDCM through SimpleITK for syntaxes pydicom cannot decode.
    Raises :class:`DicomDecodeError` naming the file and the transfer syntax when neither can."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None)
    ts = _str(meta, "TransferSyntaxUID") if meta is not None else ""
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{path}: no pixel data (transfer syntax {transfer_syntax_label(ts)})")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames") or 1
    try:
        raw = ds.pixel_array
        hu = _rescale(raw.reshape((frames,) + raw.shape[-2:]) if frames > 1 else raw, ds, frames)
    except Exception as exc_pydicom:  # noqa: BLE001 - any decoder failure: try GDCM, else explain
        try:
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(path)
            hu = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)  # GDCM applies the rescale
        except Exception as exc_gdcm:  # noqa: BLE001
            gdcm_msg = (str(exc_gdcm).strip().splitlines() or [type(exc_gdcm).__name__])[-1]
            raise DicomDecodeError(
                f"{path}: cannot decode pixel data in transfer syntax {transfer_syntax_label(ts)}: "
                f"pydicom: {str(exc_pydicom).splitlines()[0][:200]}; GDCM: {gdcm_msg[:200]}"
            ) from None
        log.info("decoded %s (transfer syntax %s) with GDCM: pydicom has no decoder for it", Path(path).name,
                 transfer_syntax_label(ts))
    hu = hu.reshape((-1,) + hu.shape[-2:]) if hu.ndim >= 2 else hu
    if hu.ndim != 3 or hu.shape[0] != frames or (rows and cols and hu.shape[1:] != (rows, cols)):
        raise DicomDecodeError(f"{path}: decoded pixel array has shape {hu.shape}, expected ({frames}, {rows}, {cols}) "
                               f"(transfer syntax {transfer_syntax_label(ts)})")
    return hu


def decode_hu(path: str) -> np.ndarray:
    """Decode a single-frame image file to a float32 ``[rows, columns]`` HU array (see
    :func:`decode_frames_hu`); multi-frame files are refused."""
    hu = decode_frames_hu(path)
    if hu.shape[0] != 1:
        raise DicomDecodeError(f"{path}: multi-frame image ({hu.shape[0]} frames) where a single slice was expected")
    return hu[0]


# ---------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------


@dataclass
class SlicePlan:
    """The slices of a series in order along the slice normal, and the grid they define."""

    instances: list[InstanceHeader]
    spacing: tuple[float, float, float]  # x (column step), y (row step), z (slice step), mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns = row cosine, column cosine, normal
    positions_mm: list[float]  # position of each kept slice along the normal
    notes: list[str] = field(default_factory=list)


def _uid_sort_key(uid: str) -> tuple:
    try:
        return tuple(int(p) for p in uid.split("."))
    except ValueError:
        return (uid,)


def plan_slices(series: DicomSeries) -> SlicePlan:
    """Check that a series forms a regular volume and order its slices (headers only).

    Raises :class:`VolumeGeometryError` (naming the series and what is wrong) for: multi-frame
    images, missing position/orientation, mixed orientation/matrix/pixel spacing, fewer than 2
    distinct positions, gantry tilt, missing slices and irregular spacing."""
    label = series.label()
    inst = series.instances
    if any(i.number_of_frames > 1 for i in inst):
        raise VolumeGeometryError(
            f"{label}: multi-frame image ({UID(series.sop_class_uid).name}); Enhanced/multi-frame CT is not "
            "supported - export the series as single-frame CT Image Storage")
    missing = [i.path for i in inst if i.position is None or i.orientation is None or i.pixel_spacing is None]
    if missing:
        raise VolumeGeometryError(f"{label}: {len(missing)} file(s) lack ImagePositionPatient/ImageOrientationPatient/"
                                  f"PixelSpacing (first: {missing[0]}); cannot place the slices in space")
    ref = inst[0]
    iop0 = np.array(ref.orientation, dtype=float)
    for i in inst[1:]:
        if np.max(np.abs(np.array(i.orientation) - iop0)) > ORIENTATION_TOL:
            raise VolumeGeometryError(f"{label}: slices have different ImageOrientationPatient "
                                      f"({list(ref.orientation)} in {ref.path}, {list(i.orientation)} in {i.path})")
        if (i.rows, i.columns) != (ref.rows, ref.columns):
            raise VolumeGeometryError(f"{label}: slices have different matrix sizes ({ref.rows}x{ref.columns} in "
                                      f"{ref.path}, {i.rows}x{i.columns} in {i.path})")
        if np.max(np.abs(np.array(i.pixel_spacing) - np.array(ref.pixel_spacing))) > 1e-4:
            raise VolumeGeometryError(f"{label}: slices have different PixelSpacing ({list(ref.pixel_spacing)} in "
                                      f"{ref.path}, {list(i.pixel_spacing)} in {i.path})")
    row = iop0[:3] / np.linalg.norm(iop0[:3])
    col = iop0[3:] / np.linalg.norm(iop0[3:])
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        raise VolumeGeometryError(f"{label}: ImageOrientationPatient {list(ref.orientation)} has parallel cosines")
    normal /= np.linalg.norm(normal)

    proj = [float(np.dot(np.array(i.position), normal)) for i in inst]
    order = sorted(range(len(inst)), key=lambda k: proj[k])

    # Duplicates: same position along the normal -> keep the highest InstanceNumber, then UID.
    notes: list[str] = []
    kept: list[int] = []
    k = 0
    while k < len(order):
        group = [order[k]]
        while k + len(group) < len(order) and abs(proj[order[k + len(group)]] - proj[order[k]]) <= DUPLICATE_TOL_MM:
            group.append(order[k + len(group)])
        if len(group) > 1:
            best = max(group, key=lambda g: (inst[g].instance_number if inst[g].instance_number is not None else -1,
                                             _uid_sort_key(inst[g].sop_instance_uid)))
            dropped = [g for g in group if g != best]
            msg = (f"{label}: {len(group)} slices at the same position {proj[best]:.3f} mm along the normal; kept "
                   f"{Path(inst[best].path).name} (InstanceNumber {inst[best].instance_number}, SOP Instance UID "
                   f"{inst[best].sop_instance_uid}), dropped "
                   + ", ".join(f"{Path(inst[g].path).name} (InstanceNumber {inst[g].instance_number}, SOP Instance "
                               f"UID {inst[g].sop_instance_uid})" for g in dropped)
                   + " [rule: highest InstanceNumber, then highest SOP Instance UID]")
            notes.append(msg)
            log.warning(msg)
        kept.append(group[0] if len(group) == 1 else best)
        k += len(group)

    if len(kept) < 2:
        raise VolumeGeometryError(f"{label}: {len(kept)} distinct slice position(s); a volume needs at least 2")

    pos = [proj[g] for g in kept]
    steps = np.diff(pos)
    median = float(np.median(steps))

    # Gantry tilt: consecutive slices must be stacked along the normal of their plane.
    first, last = np.array(inst[kept[0]].position), np.array(inst[kept[-1]].position)
    d = last - first
    along = float(np.dot(d, normal))
    perp = float(np.linalg.norm(d - along * normal))
    tilt_deg = math.degrees(math.atan2(perp, abs(along)))
    if tilt_deg > TILT_TOL_DEG:
        tag = series.get("GantryDetectorTilt", None)
        raise VolumeGeometryError(
            f"{label}: slices are stacked {tilt_deg:.2f} degrees off the normal of their plane (gantry tilt"
            + (f", GantryDetectorTilt {tag}" if tag not in (None, "") else "")
            + "); tilted acquisitions are not supported - reconstruct the series without tilt")

    gaps, irregular = [], []
    for a, b, s in zip(pos[:-1], pos[1:], steps):
        if s > GAP_FACTOR * median:
            gaps.append(f"gap of {s:.2f} mm between slices at {a:.2f} and {b:.2f} mm")
        elif abs(s - median) > max(IRREGULAR_REL_TOL * median, IRREGULAR_ABS_TOL_MM):
            irregular.append(f"irregular step of {s:.2f} mm between slices at {a:.2f} and {b:.2f} mm")
    problems = gaps + irregular  # gaps (missing slices) first: they are what the user must fix
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        if gaps:
            shown = f"{len(gaps)} gap(s) larger than {GAP_FACTOR} x the usual step (missing slices): " + shown
        raise VolumeGeometryError(
            f"{label}: slices are not evenly spaced (usual step {median:.2f} mm along the slice normal; positions "
            f"measured along the normal): {shown}. Missing slices are not interpolated - send the complete series"
            + (f" ({len(notes)} duplicate position(s) were resolved first)" if notes else ""))

    ps = ref.pixel_spacing
    direction = np.column_stack([row, col, normal])
    return SlicePlan(
        instances=[inst[g] for g in kept],
        spacing=(float(ps[1]), float(ps[0]), median),
        origin=tuple(float(v) for v in first),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.reshape(-1)),
        positions_mm=pos,
        notes=notes,
    )


@dataclass
class BuiltVolume:
    image: sitk.Image  # float32 HU
    source_files: list[str]
    sop_instance_uids: list[str]
    notes: list[str]
    instances: list[InstanceHeader] = field(default_factory=list)  # in slice order, headers completed


# HU a CT volume of a body must show (checked at intake, so that blank or mis-scaled pixel data stop
# the run naming the series instead of failing later with a misleading cause).
CT_HU_RANGE = (-3100.0, 4000.0)  # 1st-99th percentile: air -1000 (scanners pad to -2048/-3024), dense bone ~2000
TISSUE_HU = -500.0  # a body has soft tissue above this (fat -100, organs +20..+80)
MIN_TISSUE_FRACTION = 0.001  # at least 0.1% of the voxels (a small body part in a wide field of view)


class PixelValueError(DicomInputError):
    """The pixel data of a series are blank, constant or not in Hounsfield units."""


def check_rescale(series: DicomSeries) -> str | None:
    """Why the series' RescaleSlope/RescaleIntercept cannot give HU (None when they can): a slope that
    is zero, negative or not a number, or an intercept that is not a number."""
    for h in series.instances:
        slope = _float_list(h.dataset, "RescaleSlope")
        intercept = _float_list(h.dataset, "RescaleIntercept")
        if slope is not None and (not math.isfinite(slope[0]) or slope[0] <= 0):
            return (f"RescaleSlope {slope[0]:g} in {Path(h.path).name}: stored values cannot be converted to HU "
                    "(the slope must be a positive number)")
        if intercept is not None and not math.isfinite(intercept[0]):
            return f"RescaleIntercept {intercept[0]:g} in {Path(h.path).name} is not a number"
    return None


def check_hu_range(array: np.ndarray, series: DicomSeries) -> None:
    """Raise :class:`PixelValueError` naming the series when its decoded volume is not a CT of a
    body in HU: values that are not finite, a constant image, no voxel of tissue (blank pixel data,
    e.g. all -1024), or values far outside the CT range (a wrong rescale, e.g. a slope of 1e6)."""
    label = series.label()
    sample = np.asarray(array).ravel()[:: max(1, array.size // 2_000_000)]  # percentiles on <= 2 M voxels
    if not np.isfinite(sample).all():
        raise PixelValueError(f"{label}: the decoded pixel data hold values that are not finite numbers")
    lo, hi = float(sample.min()), float(sample.max())
    rescale = (f"RescaleSlope {series.get('RescaleSlope', '<absent>')}, RescaleIntercept "
               f"{series.get('RescaleIntercept', '<absent>')}")
    if lo == hi:
        raise PixelValueError(f"{label}: every voxel is {lo:g} HU (blank pixel data, {rescale}); there is no image")
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    if p1 < CT_HU_RANGE[0] or p99 > CT_HU_RANGE[1]:
        raise PixelValueError(
            f"{label}: HU from {p1:.4g} to {p99:.4g} (1st-99th percentile; {rescale}) lie outside the CT range "
            f"{CT_HU_RANGE[0]:g} to {CT_HU_RANGE[1]:g} HU: the rescale slope/intercept or the pixel data are wrong")
    tissue = float(np.mean(sample > TISSUE_HU))
    if tissue < MIN_TISSUE_FRACTION:
        raise PixelValueError(
            f"{label}: {100 * tissue:.2g}% of the voxels are above {TISSUE_HU:g} HU (range {lo:g} to {hi:g} HU): "
            "the pixel data are blank (no body in the image)")


def build_volume(series: DicomSeries) -> BuiltVolume:
    """Decode a series into a float32 HU ``sitk.Image`` on the series' own grid (see
    :func:`plan_slices` for the geometry checks and :func:`check_hu_range` for the values)."""
    plan = plan_slices(series)
    progress = Progress(f"decoding {series.label()}", log=log)
    slices = []
    for k, inst in enumerate(plan.instances):
        hu = decode_hu(inst.path)
        slices.append(hu)
        progress.update(k + 1, len(plan.instances), "slices")
    array = np.stack(slices, axis=0).astype(np.float32, copy=False)
    check_hu_range(array, series)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(plan.spacing)
    image.SetOrigin(plan.origin)
    image.SetDirection(plan.direction)
    notes = list(series.notes) + plan.notes
    return BuiltVolume(
        image=image,
        source_files=[i.path for i in plan.instances],
        sop_instance_uids=[i.sop_instance_uid for i in plan.instances],
        notes=notes,
        instances=list(plan.instances),
    )
