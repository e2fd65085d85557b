"""One synthetic two-phase CT study: anatomy, lesions, both phases, ground truth."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from lnmet.config import AttentionSettings, load_settings
from lnmet.labels import ANATOMY_LABELS as L
from lnmet.progress import Progress
from synthetic import appearance, scanner
from synthetic.anatomy import Anatomy, sample_anatomy
from synthetic.appearance import Contrast
from synthetic.deformation import Breathing
from synthetic.grid import PRESETS, Grid, Preset
from synthetic.lesions import Lesions, organ_map, sample_lesions

# 1.1.0: LN volumes and tumour diameters follow Table 1 (the generated cohort, not only the knots).
# 2.0.0: realistic anatomy (ribs, arms, table, bowel, vessel tree, lobulated pancreas, kidneys...),
#        per-patient contrast, kernel-shaped noise and streaks; node appearance overlapping between classes.
# 2.1.0: the spleen posterolateral along the 10th rib; duodenal gas of supine patients.
# 2.2.0: the spleen's broad upper pole under the left dome (medial, posterior, against the diaphragm).
# 2.3.0: the upper left quadrant: the fundus back against the spleen's gastric surface, the splenic flexure high beside them.
# 2.4.0: the fatty pancreas, a candidate rejected and reverted (docs/RESULTS.md).
# 2.5.0: an empty stomach in half the patients: body and antrum collapsed to a thick-walled band.
GENERATOR_VERSION = "2.5.0"
DEFORMATION_SPACING_MM = 4.0


@dataclass
class SyntheticStudy:
    """A generated study in memory (see docs/ARCHITECTURE.md for every field)."""

    case_id: str
    seed: int
    preset: str
    grid: Grid
    venous: sitk.Image
    arterial: sitk.Image
    organs: sitk.Image
    anatomy: sitk.Image
    pdac: sitk.Image
    ln_instances: sitk.Image
    arterial_organs: sitk.Image
    displacement: sitk.Image
    landmarks: list[dict[str, list[float]]]
    lymph_nodes: list[dict[str, Any]]
    patient: dict[str, Any]
    series: dict[str, dict[str, Any]]
    header: dict[str, Any]
    study_uid: str
    frame_of_reference_uid: str
    arterial_aligned: sitk.Image | None = None  # arterial intensities without the deformation
    extras: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything of the study that is not an image (written as ground_truth/study.json)."""
        return {
            "generator": "synthetic (pdac-ln-met)", "generator_version": GENERATOR_VERSION,
            "case_id": self.case_id, "seed": self.seed, "preset": self.preset,
            "geometry": {"size_xyz": list(self.grid.size_xyz), "spacing_mm": list(self.grid.spacing),
                         "origin_mm": list(self.grid.origin), "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
            "study_instance_uid": self.study_uid, "frame_of_reference_uid": self.frame_of_reference_uid,
            "series": self.series, "patient": self.patient, "lymph_nodes": self.lymph_nodes,
            "landmarks": self.landmarks,
            "deformation": {"convention": "venous point p shows the tissue of arterial point p + u(p)",
                            "grid_spacing_mm": DEFORMATION_SPACING_MM, **self.extras.get("deformation", {})},
            "contrast": self.extras.get("contrast"), "scanner": self.extras.get("scanner"),
            "habitus": self.extras.get("habitus"),
        }


def _uid(*parts: Any) -> str:
    """A deterministic UUID-derived UID (2.25.<128-bit integer>) from the given parts."""
    digest = hashlib.sha256("|".join(["pdac-ln-met synthetic", *map(str, parts)]).encode()).digest()
    value = int.from_bytes(digest[:16], "big") >> 1  # 127 bits: fits the 64-character UID limit
    return f"2.25.{value}"


def _header(rng: np.random.Generator, seed: int) -> dict[str, Any]:
    """Patient/study attributes (Table 1: 62% male, age 63 [56-69])."""
    sex = "M" if rng.uniform() < 0.62 else "F"
    age = int(np.clip(np.rint(rng.normal(63, 9.5)), 35, 90))
    study_date = dt.date(2025, 1, 6) + dt.timedelta(days=int(rng.integers(0, 600)))
    birth = dt.date(study_date.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    if (birth.month, birth.day) > (study_date.month, study_date.day):
        birth = birth.replace(year=birth.year - 1)
    injection = dt.datetime.combine(study_date, dt.time(8, 0)) + dt.timedelta(minutes=int(rng.integers(0, 540)))
    art = injection + dt.timedelta(seconds=float(rng.uniform(38, 45)))
    ven = injection + dt.timedelta(seconds=float(rng.uniform(68, 75)))
    return {"sex": sex, "age": age, "study_date": study_date, "birth_date": birth, "injection": injection,
            "acquisition": {"arterial": art, "venous": ven}, "patient_id": f"SYN{seed:06d}",
            "accession": f"A{seed:08d}"}


@dataclass
class Patient:
    """Everything drawn for one seed before any rendering (independent of the preset)."""

    seed: int
    anatomy: Anatomy
    lesions: Lesions
    breathing: Breathing
    header: dict[str, Any]
    rng_texture: np.random.Generator
    rng_noise: np.random.Generator
    rng_landmarks: np.random.Generator
    contrast: Contrast
    rng_scanner: np.random.Generator


def _patient_streams(seed: int) -> list[np.random.Generator]:
    """The nine independent random streams of patient ``seed`` (anatomy first)."""
    seq = np.random.SeedSequence([20241, int(seed)])
    return [np.random.default_rng(s) for s in seq.spawn(9)]


def sample_patient_anatomy(seed: int) -> Anatomy:
    """The anatomy of patient ``seed`` alone, as :func:`sample_patient` draws it, without the
    lesions (which take most of a patient's sampling time)."""
    return sample_anatomy(_patient_streams(seed)[0])


def sample_patient(seed: int, attention: AttentionSettings | None = None) -> Patient:
    """Draw the anatomy, lesions, deformation and header of patient ``seed`` (independent random
    streams, so that rendering choices never change the patient)."""
    attention = attention or load_settings().attention
    r_anat, r_les, r_def, r_hdr, r_tex, r_noise, r_lm, r_con, r_scan = _patient_streams(seed)
    anat = sample_anatomy(r_anat)
    lesions = sample_lesions(anat, r_les, attention)
    contrast = Contrast.sample(r_con, anat.pancreas_fat_fraction)
    return Patient(int(seed), anat, lesions, Breathing.sample(r_def), _header(r_hdr, seed), r_tex, r_noise, r_lm,
                   contrast, r_scan)


def render_labels(patient: Patient, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy label map with tumour, nodes and distractors, and the node instance map, of
    ``patient`` on ``grid`` (labels of any grid, e.g. the training grid of a study acquired at
    another voxel size)."""
    labels = patient.anatomy.render(grid)
    patient.lesions.tumour.paint(grid, labels)
    inst = np.zeros(grid.shape, np.uint16)
    for node in patient.lesions.nodes:
        node.paint(grid, labels, inst, node.id)
    for d in patient.lesions.distractors:
        d.paint(grid, labels, None, 0)
    return labels, inst


def generate_study(seed: int, preset: str | Preset = "tiny", attention: AttentionSettings | None = None,
                   progress: Callable[[str], None] | None = None) -> SyntheticStudy:
    """Generate one study, deterministically from ``seed``; the same seed gives the same patient at
    every preset (anatomy and lesions do not depend on the voxel size). ``progress(text)`` is called
    as each stage starts (default: an INFO log line with the elapsed time, lnmet.progress)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    stage = progress or Progress(f"generating study seed {seed} ({p.name})").note
    stage("sampling the patient")
    patient = sample_patient(seed, attention)
    contrast = patient.contrast
    anat, lesions, breathing, hdr = patient.anatomy, patient.lesions, patient.breathing, patient.header
    r_tex, r_noise, r_def = patient.rng_texture, patient.rng_noise, patient.rng_landmarks
    r_scan = patient.rng_scanner

    grid = p.grid
    padded, inner = grid.padded(16.0)
    stage("rendering the anatomy and lesions")
    labels_p, inst_p = render_labels(patient, padded)

    stage("rendering the venous phase")
    texture = appearance.texture_field(padded, r_tex)
    shift, node_tex = _lesion_adjustments(padded, labels_p, inst_p, lesions)
    acq = scanner.Scanner.sample(r_scan, p.noise_hu)
    streak_seed = int(r_scan.integers(2**31))

    def phase_image(phase: str) -> np.ndarray:
        hu = appearance.render_phase(labels_p, texture, phase, shift, node_tex, contrast=contrast)
        hu = scanner.add_streaks(hu, labels_p, padded, acq, np.random.default_rng(streak_seed))
        return appearance.blur(hu, padded, slice_thickness_mm=p.slice_thickness)

    ven_p = phase_image("venous")
    venous = scanner.add_ct_noise(ven_p[inner], grid, acq, r_noise)
    del ven_p
    stage("rendering and deforming the arterial phase")
    art_p = phase_image("arterial")
    # the arterial phase as perfect registration would give it (training data), with its own noise
    arterial_aligned = scanner.add_ct_noise(art_p[inner], grid, acq, np.random.default_rng([20241, int(seed), 7]))
    arterial = scanner.add_ct_noise(breathing.warp(art_p, padded, grid, order=1, cval=-1000.0), grid, acq, r_noise)
    del art_p
    organs_p = organ_map(labels_p)
    arterial_organs = breathing.warp(organs_p, padded, grid, order=0, cval=0)
    labels = labels_p[inner]
    organs = organs_p[inner]
    inst = inst_p[inner]

    case_id = f"SYN{seed:06d}"
    study_uid = _uid(seed, "study")
    for_uid = _uid(seed, "frame-of-reference")
    series = {}
    for phase, number in (("arterial", 3), ("venous", 4)):
        series[phase] = {
            "SeriesInstanceUID": _uid(seed, p.name, phase, "series"),
            "SeriesNumber": number,
            "SeriesDescription": ("Pancreas arterial phase" if phase == "arterial" else "Portal venous phase")
            + f" {p.slice_thickness:g} mm",
            "AcquisitionTime": hdr["acquisition"][phase].strftime("%H%M%S.%f")[:13],
            "AcquisitionDateTime": hdr["acquisition"][phase].isoformat(),
        }

    stage("ground truth: deformation, landmarks, lymph node table")
    # Deformation ground truth: coarse displacement grid + landmarks.
    dgrid = Grid.centred(
        tuple(int(np.ceil(n * s / DEFORMATION_SPACING_MM)) + 1 for n, s in zip(grid.size_xyz, grid.spacing)),
        (DEFORMATION_SPACING_MM,) * 3,
        tuple(o + (n - 1) * s / 2 for o, n, s in zip(grid.origin, grid.size_xyz, grid.spacing)))
    disp = breathing.displacement_grid(dgrid)
    disp_img = sitk.GetImageFromArray(disp, isVector=True)
    disp_img.SetSpacing(dgrid.spacing)
    disp_img.SetOrigin(dgrid.origin)
    landmarks = _landmarks(grid, labels, lesions, breathing, r_def)

    lymph_nodes = _node_table(grid, inst, lesions)
    t = lesions.tumour
    pdac = (labels == L["pdac"]).astype(np.uint8)
    tumour_vox = int(pdac.sum())
    patient = {
        "metastasis_positive": lesions.metastasis_positive,
        "metastasis_probability": round(lesions.metastasis_probability, 4),
        "num_lymph_nodes": len(lesions.nodes),
        "num_positive_lymph_nodes": sum(n.positive for n in lesions.nodes),
        "num_distractor_nodules": len(lesions.distractors),
        "sex": hdr["sex"], "age": hdr["age"],
        "tumour": {
            "location": t.location,
            "diameter_mm": round(_max_diameter(t), 2),
            "nominal_diameter_mm": round(t.nominal_diameter_mm, 2),
            "volume_mm3": round(tumour_vox * grid.voxel_volume, 1),
            "centroid_mm": [round(float(v), 2) for v in t.centre],
            "aggressiveness": round(t.aggressiveness, 3),
            "in_field_of_view": tumour_vox > 0,
        },
    }
    study = SyntheticStudy(
        case_id=case_id, seed=int(seed), preset=p.name, grid=grid,
        venous=grid.to_sitk(venous), arterial=grid.to_sitk(arterial), organs=grid.to_sitk(organs),
        anatomy=grid.to_sitk(labels), pdac=grid.to_sitk(pdac), ln_instances=grid.to_sitk(inst),
        arterial_organs=grid.to_sitk(arterial_organs.astype(np.uint8)), displacement=disp_img,
        landmarks=landmarks, lymph_nodes=lymph_nodes, patient=patient, series=series, header=hdr,
        study_uid=study_uid, frame_of_reference_uid=for_uid,
        arterial_aligned=grid.to_sitk(arterial_aligned),
        extras={"deformation": {"max_displacement_mm": round(float(np.linalg.norm(disp, axis=-1).max()), 3)},
                "contrast": contrast.to_json(), "scanner": acq.to_json(),
                "habitus": {"arms_down": anat.body.arms_down, "subcutaneous_fat_mm": round(anat.body.subcut, 1),
                            "pancreas_fat_fraction": round(anat.pancreas_fat_fraction, 3),
                            "stomach_collapsed": anat.stomach_collapsed}},
    )
    return study


def _lesion_adjustments(grid: Grid, labels: np.ndarray, inst: np.ndarray, lesions: Lesions):
    """Per-voxel HU shift and texture amplitude of the nodes and the tumour."""
    shift = np.zeros(grid.shape, np.float32)
    tex = np.zeros(grid.shape, np.float32)
    for n in lesions.nodes + lesions.distractors:
        lo, hi = n.shape.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            continue
        block = labels[sl]
        m = np.isin(block, [L["lymph_node"], L["ln_necrosis"], L["distractor_nodule"]])
        if not n.distractor:
            m &= inst[sl] == n.id
        shift[sl][m] = n.hu_shift
        tex[sl][m] = n.texture
    t = lesions.tumour
    lo, hi = t.shape.bbox()
    sl = grid.index_range(lo, hi)
    if sl is not None:
        x, y, z = grid.coords(sl)
        m = labels[sl] == L["pdac"]
        g = t.aggressiveness
        s = np.full(m.shape, -5.0 * g, np.float32)
        if g > 1.0:  # aggressive tumours: hypodense necrotic core
            s += np.where(t.shape.level(x, y, z) < 0.45, -28.0, 0.0).astype(np.float32)
        shift[sl][m] = s[m]
        tex[sl][m] = 8.0 + 5.0 * max(g, 0.0)
    return shift, tex


def _max_diameter(t) -> float:
    """Largest axial-plane diameter of the tumour, measured on a fine local grid."""
    lo, hi = t.shape.bbox()
    g = Grid.centred(tuple(int(np.ceil((h - l) / 0.5)) + 1 for l, h in zip(lo, hi)), (0.5, 0.5, 0.5),
                     tuple((l + h) / 2 for l, h in zip(lo, hi)))
    x, y, z = g.coords(g.full)
    m = (t.shape.level(x, y, z) <= 1.0) & (t.envelope.distance_ratio(g, g.full, x, y, z) <= 1.0)
    best = 0.0
    for k in range(0, m.shape[0], 2):
        yy, xx = np.nonzero(m[k])
        if len(xx) < 2:
            continue
        pts = np.column_stack([xx, yy]) * 0.5
        # Feret diameter via the convex hull-ish extreme points along 36 directions
        ang = np.linspace(0, np.pi, 36, endpoint=False)
        proj = pts @ np.vstack([np.cos(ang), np.sin(ang)])
        best = max(best, float((proj.max(0) - proj.min(0)).max()))
    return best


def _node_table(grid: Grid, inst: np.ndarray, lesions: Lesions) -> list[dict[str, Any]]:
    counts = np.bincount(inst.ravel(), minlength=len(lesions.nodes) + 1)
    rows = []
    for n in lesions.nodes:
        vol_exact = float(4.0 / 3.0 * np.pi * np.prod(n.shape.semi_axes))
        axes = np.sort(n.shape.semi_axes)[::-1] * 2
        rows.append({
            "id": n.id, "positive": n.positive, "station_structure": n.station,
            "nearest_structure": n.nearest_structure, "distance_mm": round(n.distance_mm, 2),
            "max_distance_mm": round(n.max_distance_mm, 2), "in_range_fraction": round(n.in_range_fraction, 3),
            "volume_mm3": round(float(counts[n.id]) * grid.voxel_volume, 1),
            "nominal_volume_mm3": round(vol_exact, 1),
            "axes_mm": [round(float(a), 2) for a in axes],
            "centroid_mm": [round(float(v), 2) for v in n.centre],
            "necrotic": n.necrotic, "texture_hu": round(n.texture, 2), "hu_shift": round(n.hu_shift, 2),
            "in_field_of_view": bool(counts[n.id] > 0),
        })
    return rows


def _landmarks(grid: Grid, labels: np.ndarray, lesions: Lesions, breathing: Breathing,
               rng: np.random.Generator, n_random: int = 40) -> list[dict[str, list[float]]]:
    """Venous points (organ/vessel voxels, lesion centres, random soft-tissue voxels inside the field
    of view) and where the same tissue is in the arterial image."""
    pts = [n.centre for n in lesions.nodes] + [lesions.tumour.centre]
    soft = np.flatnonzero((labels > 0) & (labels != L["background_air"]) & (labels != L["stomach_gas"])
                       & (labels != L["duodenum_gas"]))
    if soft.size:
        pick = rng.choice(soft, size=min(n_random, soft.size), replace=False)
        zyx = np.array(np.unravel_index(pick, labels.shape), float).T
        pts += list(np.array(grid.origin) + zyx[:, ::-1] * np.array(grid.spacing))
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.size_xyz) - 1) * np.array(grid.spacing)
    pts = [np.asarray(q, float) for q in pts if np.all(q >= lo) and np.all(q <= hi)]
    if not pts:
        return []
    p = np.vstack(pts)
    q = breathing.inverse_points(p)
    return [{"venous_mm": [round(float(v), 3) for v in a], "arterial_mm": [round(float(v), 3) for v in b]}
            for a, b in zip(p, q)]
