"""Export of a generated cohort in nnU-Net's raw dataset layout (what the training commands read).

One dataset per task, sharing the images (symlinks):

- ``Dataset501_PancreasOrgans``: ``imagesTr/<case>_0000.nii.gz`` arterial (co-registered on the venous
  grid, as a perfect registration would give it), ``<case>_0001.nii.gz`` venous, ``labelsTr`` = the ten
  organ/vessel classes;
- ``Dataset502_PancreasLymphNodes``: ``labelsTr`` = LN (1) / background, plus ``organsTr`` (organ labels
  for the attention map), ``instancesTr`` (one id per LN) and ``lymph_nodes/<case>.json`` (LN table);
- ``Dataset503_PancreasTumour``: ``labelsTr`` = PDAC;
- ``anatomyTr/`` beside ``labelsTr/`` in every dataset: the full anatomy label map (lnmet.labels
  ``ANATOMY_LABELS``: fat, bowel, ribs, vessels...), which training-time domain randomisation uses to
  change each tissue's HU (contrast strength and timing, per-organ shifts);
- ``patients.json``: patient label, tumour and LN summary per case, and with
  ``acquisition="random"`` how the case was acquired and the tissue HU it was rendered with.

With ``acquisition="random"`` each case is generated at its own voxel size and coverage
(:mod:`synthetic.acquisition`) and resampled to the preset's grid by the application's own
resampling (:mod:`lnmet.geometry`); its labels are rendered directly on that grid.

Exporting more seeds into an existing folder adds cases (the json files are merged).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import SimpleITK as sitk

from lnmet.labels import ORGAN_CLASSES
from synthetic.study import GENERATOR_VERSION

if TYPE_CHECKING:
    from synthetic.grid import Preset

ORGANS = "Dataset501_PancreasOrgans"
LYMPH_NODES = "Dataset502_PancreasLymphNodes"
TUMOUR = "Dataset503_PancreasTumour"
CHANNELS = {"0": "CT_arterial", "1": "CT_venous"}


def _write(img: sitk.Image, path: Path, pixel) -> None:
    sitk.WriteImage(sitk.Cast(img, pixel), str(path), useCompression=True)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def export_case(out: Path, seed: int, preset: "str | Preset", acquisition: str = "preset") -> tuple[str, dict]:
    """Write one study (module docstring); ``preset``: a preset's name, or a :class:`synthetic.grid.Preset`
    (e.g. a preset's field scanned at other voxels, :meth:`synthetic.acquisition.Acquisition.preset`)."""
    from lnmet.geometry import resample_image, working_grid
    from lnmet.labels import ANATOMY_LABELS
    from synthetic import generate_study
    from synthetic.acquisition import sample_acquisition
    from synthetic.grid import PRESETS, Grid
    from synthetic.lesions import organ_map
    from synthetic.study import render_labels, sample_patient

    base = PRESETS[preset] if isinstance(preset, str) else preset
    acq = sample_acquisition(np.random.default_rng([20241, int(seed), 11]), base) if acquisition == "random" else None
    s = generate_study(seed, acq.preset(base) if acq is not None else base)
    case = s.case_id
    arterial, venous = s.arterial_aligned, s.venous
    anatomy, organs, pdac, inst = s.anatomy, s.organs, s.pdac, s.ln_instances
    if acq is not None and acq.preset(base) is not base:
        # the app's own resampling to the training grid; labels rendered exactly on that grid
        grid_img = working_grid(venous, base.spacing)
        arterial, venous = resample_image(arterial, grid_img), resample_image(venous, grid_img)
        g = Grid(tuple(grid_img.GetSize()[::-1]), tuple(grid_img.GetSpacing()), tuple(grid_img.GetOrigin()))
        labels, inst_arr = render_labels(sample_patient(seed), g)
        anatomy, inst = g.to_sitk(labels), g.to_sitk(inst_arr)
        organs = g.to_sitk(organ_map(labels))
        pdac = g.to_sitk((labels == ANATOMY_LABELS["pdac"]).astype(np.uint8))
    img_dir = out / ORGANS / "imagesTr"
    _write(arterial, img_dir / f"{case}_0000.nii.gz", sitk.sitkInt16)
    _write(venous, img_dir / f"{case}_0001.nii.gz", sitk.sitkInt16)
    _write(organs, out / ORGANS / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
    _write(anatomy, out / ORGANS / "anatomyTr" / f"{case}.nii.gz", sitk.sitkUInt8)
    for ds in (LYMPH_NODES, TUMOUR):
        for ch in ("0000", "0001"):
            _link(img_dir / f"{case}_{ch}.nii.gz", out / ds / "imagesTr" / f"{case}_{ch}.nii.gz")
        _link(out / ORGANS / "anatomyTr" / f"{case}.nii.gz", out / ds / "anatomyTr" / f"{case}.nii.gz")
    ln = out / LYMPH_NODES
    _write(inst > 0, ln / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
    _write(organs, ln / "organsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
    _write(inst, ln / "instancesTr" / f"{case}.nii.gz", sitk.sitkUInt16)
    (ln / "lymph_nodes" / f"{case}.json").write_text(json.dumps(s.lymph_nodes, indent=1))
    _write(pdac, out / TUMOUR / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
    row = {"seed": seed, "preset": base.name, "generator_version": GENERATOR_VERSION, **s.patient,
           "contrast": s.extras.get("contrast"), "scanner": s.extras.get("scanner")}
    if acq is not None:
        row["acquisition"] = acq.to_json()
    return case, row


def _dataset_json(folder: Path, labels: dict[str, int], description: str) -> None:
    n = len(list((folder / "labelsTr").glob("*.nii.gz")))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": CHANNELS, "labels": labels, "numTraining": n, "file_ending": ".nii.gz",
        "description": description + " Synthetic studies generated by the project's synthetic/ generator.",
    }, indent=1))


def export_nnunet(out: Path, seeds: Iterable[int], preset: "str | Preset" = "train", workers: int = 1,
                  acquisition: str = "preset") -> None:
    """Export the studies of ``seeds`` (see the module docstring); ``acquisition``: "preset" (every case
    on the preset's grid) or "random" (acquisition randomisation, :mod:`synthetic.acquisition`)."""
    if acquisition not in ("preset", "random"):
        raise ValueError(f"acquisition must be 'preset' or 'random', not {acquisition!r}")
    out = Path(out)
    for ds, extra in ((ORGANS, ()), (LYMPH_NODES, ("organsTr", "instancesTr", "lymph_nodes")), (TUMOUR, ())):
        for sub in ("imagesTr", "labelsTr", "anatomyTr") + extra:
            (out / ds / sub).mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(export_case, [out] * len(seeds), seeds, [preset] * len(seeds),
                                  [acquisition] * len(seeds)))
    else:
        results = [export_case(out, s, preset, acquisition) for s in seeds]
    pj = out / "patients.json"
    patients = json.loads(pj.read_text()) if pj.exists() else {}
    patients.update(dict(results))
    pj.write_text(json.dumps(dict(sorted(patients.items())), indent=1))
    _dataset_json(out / ORGANS, {"background": 0, **{c.key: c.label for c in ORGAN_CLASSES}},
                  "Ten organ/vessel classes of the attention map (Zheng et al. 2024).")
    _dataset_json(out / LYMPH_NODES, {"background": 0, "lymph_node": 1},
                  "Lymph nodes (class-agnostic); instancesTr and lymph_nodes/ give instances and classes.")
    _dataset_json(out / TUMOUR, {"background": 0, "pdac": 1}, "Pancreatic ductal adenocarcinoma.")
    print(f"exported {len(results)} case(s) ({preset if isinstance(preset, str) else preset.name}) to {out}; {len(patients)} in total")
