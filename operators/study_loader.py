"""StudyLoaderOperator: reads the headers of every DICOM file under the input folder.

Ports: optional input ``input_path`` (a folder path; when nothing is received, the ``input_folder``
given to the constructor is used); output ``dicom_series`` (``list[lnmet.dicom_io.DicomSeries]``,
every series of every study found, headers only - pixels are decoded later, and only for the two
chosen series).

This replaces the SDK's ``DICOMDataLoaderOperator`` (see :mod:`lnmet.dicom_io` for why: it reads
all pixel data up front, drops or merges files with empty UIDs and stops on unreadable files).
An input folder with no readable DICOM file raises :class:`lnmet.dicom_io.DicomInputError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from lnmet.dicom_io import DicomInputError, DicomSeries, scan_folder

log = logging.getLogger(__name__)


def load_series(folder: str | Path) -> list[DicomSeries]:
    """All series under ``folder`` (see :func:`lnmet.dicom_io.scan_folder`)."""
    return scan_folder(folder).series


class StudyLoaderOperator(Operator):
    """Loads the DICOM headers of a folder. Input ``input_path`` (optional), output ``dicom_series``."""

    def __init__(self, fragment: Fragment, *args, input_folder: str | Path | None = None, **kwargs):
        self._input_folder = Path(input_folder) if input_folder else None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("input_path").condition(ConditionType.NONE)  # optional: no upstream needed
        spec.output("dicom_series")

    def compute(self, op_input, op_output, context) -> None:
        received = None
        try:
            received = op_input.receive("input_path")
        except Exception:  # noqa: BLE001 - nothing connected / nothing sent
            received = None
        folder = Path(received) if received else self._input_folder
        if folder is None:
            raise DicomInputError("StudyLoaderOperator: no input folder (neither the 'input_path' port nor "
                                  "the input_folder argument gave one)")
        op_output.emit(load_series(folder), "dicom_series")
