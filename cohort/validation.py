"""Is a study's output folder complete and valid? (``--resume`` checks, it does not assume.)

A study counts as done, and is skipped by ``--resume``, only when all of this holds:

1. ``results.json`` exists, is JSON and is valid against ``lnmet/schemas/results.schema.json``;
2. it is about this study (its StudyInstanceUID) and was made with the models in use now (every
   model's SHA-256 equals the manifest's);
3. every output it lists exists and is what it says: SEG, SR and the encapsulated PDF are readable
   DICOM files whose SOP Class and SOP Instance UIDs match results.json; the PDF starts with
   ``%PDF`` and is the document the encapsulated PDF carries;
4. no publishing was left half-done (no temporary folder of the publisher in the output folder).

:func:`check_outputs` returns the list of problems found (empty: complete and valid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from lnmet.reporting import RESULTS_JSON_PATH
from operators.output_publisher import TEMP_PREFIX
from operators.results_json_builder import ResultsDocumentError, validate_results_document

DICOM_OUTPUTS = ("seg", "sr", "pdf_dicom")


def read_results(folder: Path) -> dict[str, Any]:
    """results.json of an output folder (raises OSError / ValueError when missing or not JSON)."""
    return json.loads((folder / RESULTS_JSON_PATH).read_text(encoding="utf-8"))


def _check_dicom(folder: Path, entry: dict[str, Any], key: str) -> tuple[list[str], pydicom.Dataset | None]:
    path = folder / entry["path"]
    if not path.is_file():
        return [f"{entry['path']} is missing"], None
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return [f"{entry['path']} is not readable DICOM ({type(exc).__name__})"], None
    problems = []
    if str(ds.get("SOPInstanceUID", "")) != entry["sop_instance_uid"]:
        problems.append(f"{entry['path']}: SOP Instance UID differs from results.json outputs.{key}")
    if str(ds.get("SOPClassUID", "")) != entry["sop_class_uid"]:
        problems.append(f"{entry['path']}: SOP Class UID differs from results.json outputs.{key}")
    return problems, ds


def check_outputs(folder: Path, study_uid: str, model_sha256: dict[str, str] | None = None) -> list[str]:
    """The problems that make ``folder`` not a complete, valid result of ``study_uid`` (none: valid).
    ``model_sha256``: name -> SHA-256 of the models in use (results made with others are not valid)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ["no output folder"]
    problems = [f"unfinished publishing left {p.name}" for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    try:
        doc = read_results(folder)
    except FileNotFoundError:
        return problems + [f"{RESULTS_JSON_PATH} is missing"]
    except (OSError, ValueError) as exc:
        return problems + [f"{RESULTS_JSON_PATH} is not readable JSON ({type(exc).__name__})"]
    try:
        validate_results_document(doc)
    except ResultsDocumentError as exc:
        return problems + [str(exc)]
    if doc["study"]["study_instance_uid"] != study_uid:
        problems.append("results.json is about another study")
    if model_sha256 is not None:
        used = {m["name"]: m["sha256"] for m in doc["models"]}
        changed = sorted(name for name, sha in model_sha256.items() if used.get(name) != sha)
        if changed:
            problems.append(f"made with other models than the current ones ({', '.join(changed)})")
    outputs = doc["outputs"]
    datasets = {}
    for key in DICOM_OUTPUTS:
        if outputs.get(key) is not None:
            found, datasets[key] = _check_dicom(folder, outputs[key], key)
            problems += found
    if outputs.get("pdf") is not None:
        pdf_path = folder / outputs["pdf"]["path"]
        pdf = pdf_path.read_bytes() if pdf_path.is_file() else b""
        if not pdf.startswith(b"%PDF"):
            problems.append(f"{outputs['pdf']['path']} is missing or not a PDF")
        elif datasets.get("pdf_dicom") is not None:
            carried = bytes(datasets["pdf_dicom"].EncapsulatedDocument).rstrip(b"\x00")
            if carried != pdf.rstrip(b"\x00"):
                problems.append(f"{outputs['pdf']['path']} differs from the encapsulated PDF")
    return problems
