"""OutputPublisherOperator: writes the outputs of one study atomically.

Ports (no output port; it writes files):
    in ``seg_dataset`` (Dataset or None), ``sr_dataset`` (Dataset or None),
       ``pdf_document`` (:class:`lnmet.results.PdfDocument` or None), ``results_document`` (dict or None)

Layout under the output folder (see :mod:`lnmet.reporting` and docs/OUTPUTS.md)::

    SEG/seg.dcm  SR/sr.dcm  PDF/report.pdf  PDF/report.dcm  results.json

Everything is first written into a temporary folder inside the output folder (same file system),
then renamed into place; results.json is renamed last, so its presence means the set is complete.
If anything fails, the output folder is left as it was before (outputs of an earlier run that
were moved aside are put back) and nothing half-written remains. The outputs of an earlier run in
the same folder are replaced as a whole, never mixed with new ones. An output folder that cannot
be created or written to is refused with an error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.dataset import Dataset

from lnmet.reporting import PDF_DICOM_PATH, PDF_PATH, RESULTS_JSON_PATH, SEG_PATH, SR_PATH
from lnmet.results import PdfDocument
from operators.results_json_builder import validate_results_document

logger = logging.getLogger(__name__)

# Top-level entries of the output folder that the publisher owns (replaced as a set).
MANAGED_ENTRIES = ("SEG", "SR", "PDF", RESULTS_JSON_PATH)
TEMP_PREFIX = ".lnmet-publish-"


class OutputPublishError(OSError):
    """The outputs could not be published; the message names the folder or file."""


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputPublishError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPublishError(f"output folder {out} cannot be created: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputPublishError(f"output folder {out} is not writable (check its permissions)")


def _check_consistency(seg, sr, pdf, doc) -> None:
    """results.json must name exactly the objects being written."""
    if doc is None:
        return
    outputs = doc.get("outputs", {})
    for key, ds in (("seg", seg), ("sr", sr), ("pdf_dicom", pdf.dataset if pdf is not None else None)):
        entry = outputs.get(key)
        if (entry is None) != (ds is None):
            raise OutputPublishError(
                f"results.json 'outputs.{key}' is {'absent' if entry is None else 'present'} but the "
                f"{key} object is {'missing' if ds is None else 'given'}; build results.json from the same objects")
        if ds is not None and entry["sop_instance_uid"] != str(ds.SOPInstanceUID):
            raise OutputPublishError(
                f"results.json 'outputs.{key}.sop_instance_uid' {entry['sop_instance_uid']} differs from the "
                f"object to be written ({ds.SOPInstanceUID})")


def _write_dicom(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def publish_outputs(output_folder: str | os.PathLike, seg: Dataset | None = None, sr: Dataset | None = None,
                    pdf: PdfDocument | None = None, results_document: dict[str, Any] | None = None
                    ) -> dict[str, Path]:
    """Write the given outputs under ``output_folder`` atomically; return ``{relative path: path}``
    of the files written (pure function, no Holoscan needed)."""
    out = Path(output_folder).resolve()
    _check_writable(out)
    if results_document is not None:
        validate_results_document(results_document)
    _check_consistency(seg, sr, pdf, results_document)

    try:
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out))
    except OSError as exc:
        raise OutputPublishError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc
    new_dir = staging / "new"
    old_dir = staging / "old"
    written: dict[str, Path] = {}
    moved_old: list[str] = []
    placed: list[str] = []
    try:
        new_dir.mkdir()
        old_dir.mkdir()
        if seg is not None:
            _write_dicom(seg, new_dir / SEG_PATH)
            written[SEG_PATH] = out / SEG_PATH
        if sr is not None:
            _write_dicom(sr, new_dir / SR_PATH)
            written[SR_PATH] = out / SR_PATH
        if pdf is not None:
            _write_bytes(pdf.pdf_bytes, new_dir / PDF_PATH)
            _write_dicom(pdf.dataset, new_dir / PDF_DICOM_PATH)
            written[PDF_PATH] = out / PDF_PATH
            written[PDF_DICOM_PATH] = out / PDF_DICOM_PATH
        if results_document is not None:
            _write_bytes((json.dumps(results_document, indent=2, allow_nan=False) + "\n").encode("utf-8"),
                         new_dir / RESULTS_JSON_PATH)
            written[RESULTS_JSON_PATH] = out / RESULTS_JSON_PATH
        # Swap: move the earlier run's entries aside, then the new ones in (results.json last).
        for name in MANAGED_ENTRIES:
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, old_dir / name)
                moved_old.append(name)
        for name in MANAGED_ENTRIES:
            if (new_dir / name).exists():
                os.replace(new_dir / name, out / name)
                placed.append(name)
    except BaseException as exc:
        for name in placed:  # roll back: take out what was placed, put back what was there
            _remove(out / name)
        for name in moved_old:
            try:
                os.replace(old_dir / name, out / name)
            except OSError:
                logger.error("could not restore earlier output %s in %s", name, out)
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputPublishError):
            raise OutputPublishError(f"writing outputs under {out} failed: {exc}") from exc
        raise
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("published %d output files under %s: %s", len(written), out, ", ".join(written))
    return written


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class OutputPublisherOperator(Operator):
    """Writes SEG, SR, PDF (+ Encapsulated PDF) and results.json atomically (see the module docstring)."""

    def __init__(self, fragment: Fragment, *args, output_folder: str | os.PathLike, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        for name in ("seg_dataset", "sr_dataset", "pdf_document", "results_document"):
            spec.input(name)

    def compute(self, op_input, op_output, context) -> None:
        publish_outputs(
            self.output_folder,
            seg=op_input.receive("seg_dataset"),
            sr=op_input.receive("sr_dataset"),
            pdf=op_input.receive("pdf_document"),
            results_document=op_input.receive("results_document"),
        )
