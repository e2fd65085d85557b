"""The cohort table: one row per study, written as CSV and Parquet (``cohort.csv``, ``cohort.parquet``).

Every figure of a row comes from the study's own ``results.json`` (the app's output), the rest from
the cohort run (status, error, timings in the worker). Columns (:data:`SCHEMA`, in this order):

- ``study_uid``, ``sources`` (folders holding its files, relative to the input; ``;``-separated),
  ``status`` (``done``, ``failed`` or ``not assessable``), ``error`` (failed: the app's one-line
  error), ``from_earlier_run`` (``--resume`` found complete, valid outputs and did not run it again),
  ``output_folder`` (relative to the cohort's output folder);
- patient: ``patient_probability``, ``patient_threshold``, ``patient_decision`` (positive / negative /
  undetermined), ``patient_method``, ``patient_borderline`` (within app.yaml's borderline margin of
  the threshold; empty for results written before schema 1.5.0), ``patient_skill_shown`` (whether
  the patient model's held-out figure for the method used lies above chance with its whole 95% CI,
  :mod:`lnmet.held_out`; empty when none is recorded or the results predate schema 1.7.0);
- nodes: ``ln_count``, ``ln_positive_count``, ``ln_total_volume_mm3``, ``ln_largest_volume_mm3``,
  ``ln_largest_positive_volume_mm3``;
- tumour: ``tumour_found``, ``tumour_max_axial_diameter_mm``, ``tumour_volume_mm3``,
  ``tumour_model_components`` and ``tumour_selection_rule`` (how many regions the PDAC model found and
  how the reported one was chosen; empty for results.json before schema 1.6.0);
- phases: ``phases_used`` (``arterial+venous`` or ``venous``), ``venous_series_uid``,
  ``arterial_series_uid``;
- ``models`` (``name version`` of every model, ``;``-separated), ``app_version``, ``device``;
- timings: ``time_study_s`` (wall time of the study in its worker, this run), ``time_registration_s``,
  ``time_segmentation_s`` (organs, tumour, nodes), ``time_classification_s`` (node identification and
  patient), ``time_outputs_s`` (SEG, SR, PDF, JSON, publishing; this run); ``worker_peak_rss_mib``
  (the worker process's peak memory after this study), ``worker`` (host:pid).

A study whose ``results.json`` has ``status: "not_assessable"`` (the quality gate) is ``not
assessable``; its figures are still listed but the statistics leave it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

STATUS_DONE, STATUS_FAILED, STATUS_NOT_ASSESSABLE = "done", "failed", "not assessable"
CSV_NAME, PARQUET_NAME = "cohort.csv", "cohort.parquet"

SEGMENTATION_STAGES = ("organ_segmentation", "pdac_segmentation", "ln_segmentation")
CLASSIFICATION_STAGES = ("ln_identification", "patient_classifier")
OUTPUT_STAGES = ("seg_builder", "sr_builder", "pdf_report_builder", "results_json_builder", "output_publisher")

SCHEMA = pa.schema([
    ("study_uid", pa.string()), ("sources", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("from_earlier_run", pa.bool_()), ("output_folder", pa.string()),
    ("patient_probability", pa.float64()), ("patient_threshold", pa.float64()), ("patient_decision", pa.string()),
    ("patient_method", pa.string()), ("patient_borderline", pa.bool_()), ("patient_skill_shown", pa.bool_()),
    ("ln_count", pa.int64()), ("ln_positive_count", pa.int64()), ("ln_total_volume_mm3", pa.float64()),
    ("ln_largest_volume_mm3", pa.float64()), ("ln_largest_positive_volume_mm3", pa.float64()),
    ("tumour_found", pa.bool_()), ("tumour_max_axial_diameter_mm", pa.float64()), ("tumour_volume_mm3", pa.float64()),
    ("tumour_model_components", pa.int64()), ("tumour_selection_rule", pa.string()),
    ("phases_used", pa.string()), ("venous_series_uid", pa.string()), ("arterial_series_uid", pa.string()),
    ("models", pa.string()), ("app_version", pa.string()), ("device", pa.string()),
    ("time_study_s", pa.float64()), ("time_registration_s", pa.float64()), ("time_segmentation_s", pa.float64()),
    ("time_classification_s", pa.float64()), ("time_outputs_s", pa.float64()),
    ("worker_peak_rss_mib", pa.float64()), ("worker", pa.string()),
])


def study_status(doc: dict[str, Any]) -> str:
    """``not assessable`` when the app's quality gate said so, else ``done``."""
    return STATUS_NOT_ASSESSABLE if doc.get("status") == "not_assessable" else STATUS_DONE


def _sum(stages: dict[str, float], names: tuple[str, ...]) -> float | None:
    found = [float(stages[n]) for n in names if n in stages]
    return round(sum(found), 3) if found else None


def patient_skill_shown(doc: dict[str, Any]) -> bool | None:
    """Whether the held-out figure of the patient model, for the method that gave this answer, lies
    above chance with its whole CI (results.json ``models[].held_out``); None when none is recorded."""
    from lnmet.held_out import PATIENT_FIGURE, PATIENT_MODEL

    model = next((m for m in doc["models"] if m["name"] == PATIENT_MODEL), None)
    held_out = (model or {}).get("held_out") or {}
    key = PATIENT_FIGURE.get(doc["patient"]["method"])
    figure = next((f for f in held_out.get("figures", []) if f["key"] == key), None)
    return None if figure is None else figure.get("skill_shown")


def figures_from_results(doc: dict[str, Any]) -> dict[str, Any]:
    """The columns a study's results.json gives."""
    nodes = doc["lymph_nodes"]
    volumes = [float(n["volume_mm3"]) for n in nodes]
    positive = [float(n["volume_mm3"]) for n in nodes if n["positive"]]
    patient, tumour = doc["patient"], doc["tumour"]
    timings = doc.get("timings_s", {})
    return {
        "patient_probability": patient["probability"], "patient_threshold": patient["threshold"],
        "patient_decision": patient["decision"], "patient_method": patient["method"],
        "patient_borderline": patient.get("borderline"),
        "patient_skill_shown": patient_skill_shown(doc),
        "ln_count": len(nodes), "ln_positive_count": len(positive), "ln_total_volume_mm3": round(sum(volumes), 3),
        "ln_largest_volume_mm3": max(volumes, default=0.0), "ln_largest_positive_volume_mm3": max(positive, default=0.0),
        "tumour_found": tumour["found"], "tumour_max_axial_diameter_mm": tumour["max_axial_diameter_mm"],
        "tumour_volume_mm3": tumour["volume_mm3"], "tumour_model_components": tumour.get("model_components"),
        "tumour_selection_rule": tumour.get("selection_rule"),
        "phases_used": "venous" if doc["single_phase"] else "arterial+venous",
        "venous_series_uid": doc["phases"]["venous"]["series_instance_uid"],
        "arterial_series_uid": (doc["phases"]["arterial"] or {}).get("series_instance_uid"),
        "models": "; ".join(f"{m['name']} {m['version']}" for m in sorted(doc["models"], key=lambda m: m["name"])),
        "app_version": doc["app"]["version"], "device": doc["device"],
        "time_registration_s": timings.get("phase_registration"),
        "time_segmentation_s": _sum(timings, SEGMENTATION_STAGES),
        "time_classification_s": _sum(timings, CLASSIFICATION_STAGES),
    }


def build_row(record: dict[str, Any], doc: dict[str, Any] | None) -> dict[str, Any]:
    """One table row from a study's run record (see :mod:`cohort.runner`) and its results.json."""
    row: dict[str, Any] = {name: None for name in SCHEMA.names}
    stages = record.get("stage_seconds") or {}
    worker = record.get("worker") or {}
    row.update({
        "study_uid": record["study_uid"], "sources": "; ".join(record.get("sources", [])),
        "status": record["status"], "error": record.get("error"),
        "from_earlier_run": bool(record.get("from_earlier_run", False)),
        "output_folder": record.get("output_folder"),
        "time_study_s": record.get("seconds"), "time_outputs_s": _sum(stages, OUTPUT_STAGES),
        "worker_peak_rss_mib": record.get("worker_peak_rss_mib"),
        "worker": f"{worker['host']}:{worker['pid']}" if worker else None,
    })
    if doc is not None:
        row.update(figures_from_results(doc))
        if record.get("stage_seconds"):  # this run's own timings (results.json holds those up to the classifier)
            row["time_segmentation_s"] = _sum(stages, SEGMENTATION_STAGES)
            row["time_registration_s"] = stages.get("phase_registration", row["time_registration_s"])
            row["time_classification_s"] = _sum(stages, CLASSIFICATION_STAGES)
    return row


def write_table(rows: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    """Write the rows as ``cohort.csv`` and ``cohort.parquet`` under ``folder`` (atomically each)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    csv_path, parquet_path = folder / CSV_NAME, folder / PARQUET_NAME
    for path, write in ((csv_path, lambda p: pacsv.write_csv(table, p)),
                        (parquet_path, lambda p: pq.write_table(table, p))):
        tmp = path.with_name(f".{path.name}.tmp")
        write(str(tmp))
        tmp.replace(path)
    return csv_path, parquet_path


def read_table(folder_or_file: Path) -> list[dict[str, Any]]:
    """The rows of a cohort table (a cohort output folder, or its .parquet / .csv file)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / PARQUET_NAME if (path / PARQUET_NAME).is_file() else path / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no cohort table at {folder_or_file} (expected {PARQUET_NAME} or {CSV_NAME})")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    convert = pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert).to_pylist()
