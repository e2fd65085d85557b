"""Segmentation training data in nnU-Net's raw layout, cached in memory.

A dataset folder ``DatasetXXX_Name/`` holds ``dataset.json`` (nnU-Net v2: ``channel_names``,
``labels``, ``file_ending``), ``imagesTr/<case>_<cccc><ending>`` (one file per channel: 0000
arterial, 0001 venous, co-registered on the venous grid) and ``labelsTr/<case><ending>``. The LN
dataset also has ``organsTr/`` (organ labels 0-10, for the attention map) and ``instancesTr/`` (LN
instance ids). An optional ``anatomyTr/`` (the generator's full tissue map) is kept for domain
randomisation (:mod:`training.randomisation`); without it the task's labels serve as tissue map. Cases are resampled to the training spacing when needed, cropped to the body
(venous HU > -500, largest component, plus a margin) and kept as int16 HU, uint8 labels and a
float16 attention map, so that a few dozen cases fit in memory. Intensity normalisation happens
per patch (:mod:`lnmet.normalization`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lnmet.attention import attention_array
from lnmet.config import AttentionSettings
from lnmet.geometry import resample_image, resample_labels, working_grid
from lnmet.inference import body_bbox
from training.randomisation import tissue_medians

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What differs between the segmentation tasks."""

    name: str
    loss: str  # "dice_ce" (nnU-Net) or "ce_tversky" (paper Eq. 4-6)
    has_organs: bool  # organsTr/ present (attention map, LN instances)
    default_model_name: str
    # Intensity statistics from the labelled voxels grown by this margin: a small target (a tumour)
    # alone would clip the input to its own narrow HU range, so that any soft tissue of a scan with
    # other contrast looks like it (the PDAC model of generator 1.x clipped to 9-93 HU).
    normalization_margin_mm: float = 0.0


TASKS: dict[str, TaskSpec] = {
    "organs": TaskSpec("organs", "dice_ce", False, "organ_seg"),
    "lymph_nodes": TaskSpec("lymph_nodes", "ce_tversky", True, "ln_seg"),
    "pdac": TaskSpec("pdac", "dice_ce", False, "pdac_seg", normalization_margin_mm=20.0),
}

MAX_COORDS_PER_CLASS = 20000  # foreground voxel positions kept per class for patch sampling
ATTENTION_MARGIN_MM = 60.0  # LN task: cases cropped to the attended region grown by this (about half a patch)


@dataclass
class CaseData:
    """One training case in memory (all arrays [z, y, x], cropped to the body)."""

    case_id: str
    image: np.ndarray  # int16 HU [C, Z, Y, X]
    label: np.ndarray  # uint8
    spacing_zyx: tuple[float, float, float]
    attention: np.ndarray | None = None  # float16 in [0, 1] (LN task)
    instances: np.ndarray | None = None  # uint16 LN instance ids (LN task)
    class_coords: dict[int, np.ndarray] = field(default_factory=dict)  # label -> [N, 3] voxel positions
    informative_coords: np.ndarray | None = None  # [N, 3] positions with attention > 0
    tissue: np.ndarray | None = None  # uint8 tissue map for domain randomisation (anatomyTr/, else the labels)
    tissue_is_anatomy: bool = False  # True: values are lnmet.labels.ANATOMY_LABELS
    tissue_hu: np.ndarray | None = None  # float32 [C, 256] median HU per tissue value (NaN where absent)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)  # type: ignore[return-value]


def read_dataset_json(dataset_dir: str | Path) -> dict[str, Any]:
    """The dataset's ``dataset.json``, checked for the keys the training needs."""
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected an nnU-Net raw dataset folder "
                                "(dataset.json, imagesTr/, labelsTr/)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise ValueError(f"{path}: missing key '{key}' (nnU-Net v2 dataset.json)")
    if not isinstance(meta["labels"], dict) or meta["labels"].get("background") != 0:
        raise ValueError(f"{path}: 'labels' must map class names to values with background = 0")
    return meta


def channel_names(meta: dict[str, Any]) -> list[str]:
    """Channel names in channel order ("0", "1", ...)."""
    names = meta["channel_names"]
    return [str(names[k]) for k in sorted(names, key=int)]


def list_cases(dataset_dir: str | Path, meta: dict[str, Any]) -> list[str]:
    """Case ids of ``labelsTr/``, sorted."""
    ending = meta["file_ending"]
    labels_dir = Path(dataset_dir) / "labelsTr"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir}: not found (nnU-Net raw layout)")
    cases = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending))
    if not cases:
        raise ValueError(f"{labels_dir}: no label files ending in {ending}")
    return cases


def synthetic_provenance(patients: dict[str, dict[str, Any]], case_ids: Sequence[str]) -> tuple[bool, str]:
    """Whether the cases come from the generator (``patients.json`` rows with a seed) and, for the
    model metadata, their seed range and generator version(s)."""
    rows = [patients[c] for c in case_ids if isinstance(patients.get(c), dict) and "seed" in patients[c]]
    if not rows:
        return False, ""
    try:
        seeds = sorted(int(r["seed"]) for r in rows)
    except (TypeError, ValueError):
        return True, ""
    versions = sorted({str(r["generator_version"]) for r in rows if "generator_version" in r})
    return True, f"seeds {seeds[0]}-{seeds[-1]}" + (f", generator {'/'.join(versions)}" if versions else "")


def read_patients_json(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``patients.json`` of an exported cohort ({} when absent or unreadable: not generated data)."""
    path = Path(folder) / "patients.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def split_cases(cases: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split (at least one of each when there are 2+ cases)."""
    order = list(cases)
    np.random.default_rng(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


def _same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) <= 1e-3 * max(abs(y), 1e-6) for x, y in zip(a, b))


def _read(path: Path) -> sitk.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    return sitk.ReadImage(str(path))


def _coords(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if len(idx) > MAX_COORDS_PER_CLASS:
        idx = rng.choice(idx, MAX_COORDS_PER_CLASS, replace=False)
    return np.stack(np.unravel_index(idx, mask.shape), axis=1).astype(np.int32)


def load_case(dataset_dir: str | Path, case_id: str, meta: dict[str, Any], task: TaskSpec,
              spacing_mm: Sequence[float], attention_settings: AttentionSettings | None,
              body_margin_mm: float = 15.0, seed: int = 0, crop_to_attention: bool = True) -> CaseData:
    """Read, resample (if needed) and crop one case. ``spacing_mm`` is [x, y, z]. LN-task cases are
    cropped to the attended region (plus a margin) when ``crop_to_attention``, else to the body only:
    the crop is itself a selection of informative patches, so networks trained without informative
    negative selection (the ablation's plain U-Net and "w/o INS") must see the whole body."""
    root = Path(dataset_dir)
    ending = meta["file_ending"]
    n_ch = len(meta["channel_names"])
    label_path = root / "labelsTr" / f"{case_id}{ending}"
    label_img = _read(label_path)
    images = [_read(root / "imagesTr" / f"{case_id}_{c:04d}{ending}") for c in range(n_ch)]
    for c, img in enumerate(images):
        if img.GetSize() != label_img.GetSize():
            raise ValueError(f"{root / 'imagesTr' / f'{case_id}_{c:04d}{ending}'}: size {img.GetSize()} differs "
                             f"from its label map's {label_img.GetSize()}")
    extra: dict[str, sitk.Image] = {}
    if task.has_organs:
        extra["organs"] = _read(root / "organsTr" / f"{case_id}{ending}")
        inst_path = root / "instancesTr" / f"{case_id}{ending}"
        if inst_path.is_file():
            extra["instances"] = _read(inst_path)

    anatomy_path = root / "anatomyTr" / f"{case_id}{ending}"
    if anatomy_path.is_file():
        extra["anatomy"] = _read(anatomy_path)
    if not _same_spacing(label_img.GetSpacing(), spacing_mm):
        grid = working_grid(label_img, spacing_mm)
        images = [resample_image(img, grid) for img in images]
        label_img = resample_labels(label_img, grid, smooth=False)
        extra = {k: resample_labels(v, grid, smooth=False) for k, v in extra.items()}

    image = np.stack([sitk.GetArrayFromImage(img) for img in images])
    spacing_zyx = tuple(float(s) for s in label_img.GetSpacing()[::-1])
    venous_index = next((i for i, n in enumerate(channel_names(meta)) if "venous" in n.lower()), n_ch - 1)
    margin = [int(math.ceil(body_margin_mm / s)) for s in spacing_zyx]
    box = body_bbox(image[venous_index], margin_vox=margin)

    rng = np.random.default_rng(seed)
    label = sitk.GetArrayFromImage(label_img).astype(np.uint8)
    attention = instances = informative = None
    if task.has_organs:
        if attention_settings is None:
            raise ValueError("load_case: the LN task needs the attention settings")
        organs = sitk.GetArrayFromImage(extra["organs"])
        full_attention = attention_array(organs, spacing_zyx, attention_settings)
        if crop_to_attention:
            box = _attended_box(full_attention > 0, box,
                                [int(math.ceil(ATTENTION_MARGIN_MM / s)) for s in spacing_zyx])
        attention = full_attention[box].astype(np.float16)
        informative = _coords(attention > 0, rng)
        if "instances" in extra:
            instances = sitk.GetArrayFromImage(extra["instances"]).astype(np.uint16)[box]
    image = np.clip(np.rint(image[(slice(None),) + box]), -1024, 3071).astype(np.int16)
    label = label[box]
    coords = {int(v): _coords(label == v, rng) for v in np.unique(label) if v != 0}
    if "anatomy" in extra:
        tissue, is_anatomy = sitk.GetArrayFromImage(extra["anatomy"]).astype(np.uint8)[box], True
    else:
        tissue, is_anatomy = label, False
    return CaseData(case_id=case_id, image=image, label=label, spacing_zyx=spacing_zyx, attention=attention,
                    instances=instances, class_coords=coords, informative_coords=informative, tissue=tissue,
                    tissue_is_anatomy=is_anatomy, tissue_hu=tissue_medians(image, tissue))


def _attended_box(attended: np.ndarray, body: tuple[slice, ...], margin: Sequence[int]) -> tuple[slice, ...]:
    """The body box narrowed to the attended region grown by ``margin`` voxels: with informative
    negative selection every patch holds attended voxels, so the rest of the body is never sampled;
    keeping it out halves the memory of a case."""
    if not attended.any():
        return body
    idx = np.nonzero(attended)
    return tuple(slice(max(b.start, int(i.min()) - m), min(b.stop, int(i.max()) + m + 1))
                 for b, i, m in zip(body, idx, margin))


def load_cases(dataset_dir: str | Path, case_ids: Sequence[str], meta: dict[str, Any], task: TaskSpec,
               spacing_mm: Sequence[float], attention_settings: AttentionSettings | None,
               seed: int = 0, crop_to_attention: bool = True) -> list[CaseData]:
    """Load several cases (logged by count, never by patient name)."""
    out = []
    for i, case_id in enumerate(case_ids):
        out.append(load_case(dataset_dir, case_id, meta, task, spacing_mm, attention_settings, seed=seed + i,
                             crop_to_attention=crop_to_attention))
        if (i + 1) % 10 == 0 or i + 1 == len(case_ids):
            mb = sum(c.image.nbytes + c.label.nbytes + (c.attention.nbytes if c.attention is not None else 0)
                     for c in out) / 2**20
            log.info("loaded %d/%d cases (%.0f MiB in memory)", i + 1, len(case_ids), mb)
    return out


def foreground_samples(cases: Sequence[CaseData], per_case: int = 20000, seed: int = 0,
                       margin_mm: float = 0.0) -> Iterator[np.ndarray]:
    """HU values ``[C, N]`` of foreground voxels of each case (nnU-Net's normalisation statistics),
    the foreground grown by ``margin_mm`` when given."""
    rng = np.random.default_rng(seed)
    for case in cases:
        fg = case.label > 0
        if margin_mm > 0 and fg.any():
            fg = ndimage.distance_transform_edt(~fg, sampling=case.spacing_zyx) <= margin_mm
        if case.attention is not None:
            fg = fg | (case.attention > 0)  # the LN task's own foreground is tiny: use the region it attends
        idx = np.flatnonzero(fg)
        if len(idx) == 0:
            continue
        if len(idx) > per_case:
            idx = rng.choice(idx, per_case, replace=False)
        flat = case.image.reshape(case.image.shape[0], -1)
        yield flat[:, idx].astype(np.float32)
