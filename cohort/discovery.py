"""Finding the studies of a cohort: every StudyInstanceUID under a root folder, or under the folders
listed in a CSV file.

The files are read with the application's own DICOM reader (:func:`lnmet.dicom_io.scan_folder`:
headers only, non-DICOM files and DICOMDIR skipped, files without Study/Series UIDs grouped the way
the app groups them), so a cohort finds exactly the studies the app would see. Any folder layout
works: a study may be spread over several folders and one folder may hold several studies; what
makes a study is its StudyInstanceUID.

A CSV list has one study folder per row, in a column named ``folder`` (else ``path``, else the first
column); relative paths are taken from the CSV file's own folder. Each listed folder is scanned on
its own (which keeps the memory of the scan small for very large cohorts).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from lnmet.dicom_io import DicomInputError, scan_folder

log = logging.getLogger(__name__)

CSV_FOLDER_COLUMNS = ("folder", "path")


class CohortInputError(ValueError):
    """The cohort's input cannot be used; the message names the file or folder and what was expected."""


@dataclass
class Study:
    """One study of the cohort: its UID, its files and where they were found."""

    study_uid: str
    files: list[str] = field(default_factory=list)  # absolute paths, sorted
    sources: list[str] = field(default_factory=list)  # folders holding its files, relative to the input
    series: int = 0  # number of series found

    @property
    def key(self) -> str:
        """The name of its output folder: the StudyInstanceUID (digits and dots, a valid file name)."""
        return safe_name(self.study_uid)


def safe_name(uid: str) -> str:
    """A folder name for a UID: the UID itself when it holds only digits and dots (DICOM UIDs do)."""
    if uid and all(c.isdigit() or c == "." for c in uid) and not uid.startswith("."):
        return uid
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in uid).strip(".") or "study"


def read_folder_list(csv_path: Path) -> list[Path]:
    """The study folders listed in a CSV file (see the module docstring)."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CohortInputError(f"cannot read the study list {csv_path}: {exc.strerror or exc}") from None
    rows = list(csv.reader(line for line in text.splitlines() if line.strip()))
    if not rows:
        raise CohortInputError(f"the study list {csv_path} is empty (expected a header and one folder per row)")
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in CSV_FOLDER_COLUMNS if c in header), 0)
    folders = []
    for n, row in enumerate(rows[1:], start=2):
        if column >= len(row) or not row[column].strip():
            raise CohortInputError(f"{csv_path} line {n}: no folder in column '{rows[0][column]}'")
        folder = Path(row[column].strip())
        folder = folder if folder.is_absolute() else (csv_path.parent / folder)
        if not folder.is_dir():
            raise CohortInputError(f"{csv_path} line {n}: study folder not found: {folder}")
        folders.append(folder.resolve())
    if not folders:
        raise CohortInputError(f"the study list {csv_path} names no folder (expected one per row below the header)")
    return folders


def _scan(folder: Path, base: Path, studies: dict[str, Study]) -> None:
    try:
        scan = scan_folder(folder)
    except DicomInputError as exc:
        raise CohortInputError(f"no study found: {exc}") from None
    for series in scan.series:
        study = studies.setdefault(series.study_uid, Study(series.study_uid))
        study.series += 1
        for inst in series.instances:
            study.files.append(os.path.abspath(inst.path))
            rel = os.path.relpath(os.path.dirname(os.path.abspath(inst.path)), base)
            if rel not in study.sources:
                study.sources.append(rel)


def find_studies(input_path: str | os.PathLike) -> list[Study]:
    """Every study under a root folder, or in the folders a ``.csv`` list names; sorted by where
    their files are, then by UID (a stable order for the table)."""
    path = Path(input_path)
    if path.is_file() and path.suffix.lower() == ".csv":
        folders, base = read_folder_list(path), path.parent.resolve()
    elif path.is_dir():
        folders, base = [path.resolve()], path.resolve()
    else:
        raise CohortInputError(f"cohort input not found or not a folder / .csv list of study folders: {path}")
    studies: dict[str, Study] = {}
    for folder in folders:
        _scan(folder, base, studies)
    for study in studies.values():
        study.files = sorted(set(study.files))
        study.sources.sort()
    keys = {}
    for study in studies.values():
        if study.key in keys:
            raise CohortInputError(f"two studies map to the same output folder name {study.key!r}")
        keys[study.key] = study
    found = sorted(studies.values(), key=lambda s: (s.sources[0] if s.sources else "", s.study_uid))
    log.info("found %d study(ies) in %d file(s) under %s", len(found), sum(len(s.files) for s in found), path)
    return found
