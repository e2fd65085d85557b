"""Helpers of the intake tests (no tests here): modified copies of generated DICOM series."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

Modifier = Callable[[Dataset, int], None]


def copy_series(src: Path, dst: Path, modify: Modifier | None = None, *, new_uids: bool = False,
                tag: str = "copy") -> Path:
    """Copy every file of the series folder ``src`` to ``dst``, applying ``modify(ds, k)``.

    ``new_uids`` gives the copy new Series/SOP Instance UIDs (deterministic from ``tag``) so that it
    is a separate series of the same study."""
    dst.mkdir(parents=True, exist_ok=True)
    series_uid = str(generate_uid(entropy_srcs=[tag, "series"]))
    for k, path in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if new_uids:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = str(generate_uid(entropy_srcs=[tag, str(k)]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if modify is not None:
            modify(ds, k)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(dst / path.name, enforce_file_format=True)
    return dst


def copy_study(dicom_dir: Path, dst: Path, modify: Modifier | None = None) -> Path:
    """Both phases of a written study (``dicom_dir/{arterial,venous}``) copied under ``dst``."""
    for phase in ("arterial", "venous"):
        copy_series(dicom_dir / phase, dst / phase, modify)
    return dst


def set_attr(**values) -> Modifier:
    """A modifier setting attributes (a value of None deletes the attribute)."""
    def modify(ds: Dataset, k: int) -> None:
        for key, value in values.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
    return modify


def chain(*mods: Modifier) -> Modifier:
    def modify(ds: Dataset, k: int) -> None:
        for m in mods:
            m(ds, k)
    return modify
