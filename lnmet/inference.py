"""Sliding-window inference of the segmentation models (CPU or GPU).

:class:`SegmentationModel` wraps a model file (:mod:`lnmet.model_io`) and runs MONAI's
``sliding_window_inference`` with Gaussian blending on the working grid:

* restricted to the **body** (venous HU > -500, largest connected component, plus a margin): the
  air around the patient is background without running the network there;
* for the attention-guided LN model, **window skipping**: the attention map travels with the image
  as an extra channel and the predictor runs the network only on windows where some attention is
  > 0. Elsewhere the result is known: the decoder feature before the head is multiplied by 0, so
  the logits are the final head's bias at every voxel. Those constant logits are computed once (one
  forward pass with zero attention) and written for the skipped windows, so the blended output is
  the same as running every window.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from lnmet.geometry import index_to_physical, physical_to_index, resample_image, working_grid
from lnmet.model_io import LoadedModel
from lnmet.normalization import normalize_ct
from lnmet.progress import Progress

log = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0
DEFAULT_OVERLAP = 0.5


def body_bbox(venous_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU,
              margin_vox: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
    """Bounding box ``(z, y, x)`` slices of the body: voxels above ``threshold_hu``, largest
    6-connected component, grown by ``margin_vox``. The whole volume when nothing is above."""
    mask = np.asarray(venous_hu) > threshold_hu
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(0, s.start - m), min(size, s.stop + m))  # type: ignore[return-value]
                 for s, m, size in zip(box, margin_vox, mask.shape))


@dataclass
class InferenceStats:
    """What one inference did (for the logs and benchmarks)."""

    device: str
    windows_total: int = 0
    windows_run: int = 0
    seconds: float = 0.0
    body_box: tuple[tuple[int, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def windows_skipped(self) -> int:
        return self.windows_total - self.windows_run


def count_windows(shape_zyx: Sequence[int], roi_zyx: Sequence[int], overlap: float) -> int | None:
    """How many windows MONAI's ``sliding_window_inference`` runs on an image (for progress lines;
    None if MONAI's helpers changed)."""
    try:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        size = tuple(max(int(a), int(b)) for a, b in zip(shape_zyx, roi_zyx))
        interval = _get_scan_interval(size, tuple(roi_zyx), len(size), (overlap,) * len(size))
        return len(dense_patch_slices(size, tuple(roi_zyx), interval))
    except Exception:  # noqa: BLE001 - only the progress lines lose their total
        return None


class _Predictor:
    """Sliding-window predictor: image channels, plus the attention as the last channel when the
    model is attention-guided; skips windows whose attention is zero everywhere when asked.
    Reports progress by window (:class:`lnmet.progress.Progress`)."""

    def __init__(self, module: torch.jit.ScriptModule, n_image_channels: int, uses_attention: bool,
                 skip_empty: bool, constant_logits: torch.Tensor | None, stats: InferenceStats,
                 progress: Progress | None = None, total: int | None = None):
        self.module = module
        self.c = n_image_channels
        self.uses_attention = uses_attention
        self.skip_empty = skip_empty and uses_attention
        self.constant = constant_logits
        self.stats = stats
        self.progress = progress
        self.total = total

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        out = self._predict(window)
        if self.progress is not None:
            self.progress.update(self.stats.windows_total, self.total, f"{self.stats.windows_run} run")
        return out

    def _predict(self, window: torch.Tensor) -> torch.Tensor:
        b = window.shape[0]
        self.stats.windows_total += b
        if not self.uses_attention:
            self.stats.windows_run += b
            return self.module(window)
        image, attention = window[:, : self.c], window[:, self.c:]
        if not self.skip_empty:
            self.stats.windows_run += b
            return self.module(image, attention)
        assert self.constant is not None
        active = attention.flatten(1).amax(dim=1) > 0
        out = self.constant.to(window.device).view(1, -1, 1, 1, 1).expand(b, -1, *window.shape[2:]).clone()
        n_active = int(active.sum())
        if n_active:
            out[active] = self.module(image[active], attention[active]).to(out.dtype)
        self.stats.windows_run += n_active
        return out


class SegmentationModel(LoadedModel):
    """A segmentation model file ready for sliding-window inference (on a CPU, frozen and optimised:
    :func:`lnmet.model_io.optimized_for_cpu`)."""

    optimize_for_cpu = True
    _constant_logits: torch.Tensor | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "SegmentationModel":
        model = super().load(path, device)
        log.info("loaded model %s %s on %s (attention: %s)", model.name, model.metadata["version"], model.device,
                 model.uses_attention)
        return model

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.metadata["spacing_mm"])  # type: ignore[return-value]

    @property
    def patch_zyx(self) -> tuple[int, int, int]:
        return self._size_zyx()

    @property
    def uses_attention(self) -> bool:
        return bool(self.metadata.get("architecture", {}).get("attention", False))

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.metadata["channel_names"])

    @property
    def venous_channel(self) -> int:
        """Index of the venous input channel (the body is found on it); the last one by default."""
        names = [n.lower() for n in self.channel_names]
        return next((i for i, n in enumerate(names) if "venous" in n), len(names) - 1)

    @property
    def overlap(self) -> float:
        return float(self.metadata.get("inference", {}).get("overlap", DEFAULT_OVERLAP))

    def constant_logits(self) -> torch.Tensor:
        """Logits [K] of an attention-guided model where the attention is 0 (the head's bias)."""
        if self._constant_logits is None:
            shape = (1, len(self.channel_names)) + self.patch_zyx
            with torch.no_grad():
                out = self.module(torch.zeros(shape, device=self.device),
                                  torch.zeros((1, 1) + self.patch_zyx, device=self.device))
            self._constant_logits = out[0, :, 0, 0, 0].detach().float().cpu()
        return self._constant_logits

    def _logits(self, image_hu: np.ndarray, attention: np.ndarray | None, spacing_zyx: Sequence[float] | None,
                overlap: float | None, skip_empty_attention: bool, restrict_to_body: bool,
                body_channel: int | None, body_margin_mm: float, sw_batch_size: int,
                ) -> tuple[torch.Tensor, tuple[slice, ...], InferenceStats]:
        """Blended logits [K, ...] of the body box, the box, and the statistics."""
        image_hu = np.asarray(image_hu)
        if image_hu.ndim != 4 or image_hu.shape[0] != len(self.channel_names):
            raise ValueError(f"model {self.name}: expected [{len(self.channel_names)}, Z, Y, X] input "
                             f"({', '.join(self.channel_names)}), got {image_hu.shape}")
        if self.uses_attention:
            if attention is None:
                raise ValueError(f"model {self.name} is attention-guided and needs the attention map")
            if attention.shape != image_hu.shape[1:]:
                raise ValueError(f"model {self.name}: attention shape {attention.shape} differs from the image's "
                                 f"{image_hu.shape[1:]}")
        stats = InferenceStats(device=str(self.device))
        if restrict_to_body:
            spacing = spacing_zyx if spacing_zyx is not None else self.spacing_mm[::-1]
            margin = [int(math.ceil(body_margin_mm / s)) for s in spacing]
            box = body_bbox(image_hu[self.venous_channel if body_channel is None else body_channel],
                            margin_vox=margin)
        else:
            box = tuple(slice(0, n) for n in image_hu.shape[1:])
        stats.body_box = tuple((s.start, s.stop) for s in box)
        crop = normalize_ct(image_hu[(slice(None),) + box].astype(np.float32), self.metadata["normalization"])
        channels = [crop]
        if self.uses_attention:
            channels.append(np.asarray(attention, dtype=np.float32)[box][None])
        inputs = torch.from_numpy(np.concatenate(channels, axis=0)[None])
        del channels, crop
        overlap = self.overlap if overlap is None else overlap
        predictor = _Predictor(self.module, len(self.channel_names), self.uses_attention, skip_empty_attention,
                               self.constant_logits() if (self.uses_attention and skip_empty_attention) else None,
                               stats, Progress(f"model {self.name} sliding-window inference", log=log),
                               count_windows(inputs.shape[2:], self.patch_zyx, overlap))
        with torch.no_grad():
            logits = sliding_window_inference(
                inputs, roi_size=self.patch_zyx, sw_batch_size=sw_batch_size, predictor=predictor,
                overlap=overlap, mode="gaussian",
                padding_mode="constant", cval=0.0, sw_device=self.device, device=torch.device("cpu"),
            )
        return torch.as_tensor(logits).float()[0], box, stats

    def _log(self, stats: InferenceStats) -> None:
        log.info("model %s: %d/%d windows run (%d skipped) on %s in %.1f s", self.name, stats.windows_run,
                 stats.windows_total, stats.windows_skipped, stats.device, stats.seconds)

    def predict_probabilities(self, image_hu: np.ndarray, attention: np.ndarray | None = None, *,
                              spacing_zyx: Sequence[float] | None = None, overlap: float | None = None,
                              skip_empty_attention: bool = True, restrict_to_body: bool = True,
                              body_channel: int | None = None, body_margin_mm: float = 10.0, sw_batch_size: int = 1,
                              ) -> tuple[np.ndarray, InferenceStats]:
        """Softmax probabilities [K, Z, Y, X] (float32) of ``image_hu`` [C, Z, Y, X] (HU, on the
        model's grid; ``attention`` [Z, Y, X] for an attention-guided model). Outside the body box
        everything is background (probability 1 for class 0)."""
        t0 = time.perf_counter()
        logits, box, stats = self._logits(image_hu, attention, spacing_zyx, overlap, skip_empty_attention,
                                          restrict_to_body, body_channel, body_margin_mm, sw_batch_size)
        out = np.zeros((self.num_classes,) + tuple(np.asarray(image_hu).shape[1:]), dtype=np.float32)
        out[0] = 1.0
        out[(slice(None),) + box] = torch.softmax(logits, dim=0).numpy()
        stats.seconds = time.perf_counter() - t0
        self._log(stats)
        return out, stats

    def segment(self, image_hu: np.ndarray, attention: np.ndarray | None = None, *,
                spacing_zyx: Sequence[float] | None = None, overlap: float | None = None,
                skip_empty_attention: bool = True, restrict_to_body: bool = True, body_channel: int | None = None,
                body_margin_mm: float = 10.0, sw_batch_size: int = 1) -> tuple[np.ndarray, InferenceStats]:
        """Label map (uint8 argmax of the logits, 0 outside the body box) of ``image_hu``; same
        arguments as :meth:`predict_probabilities`, without keeping a probability per class."""
        t0 = time.perf_counter()
        logits, box, stats = self._logits(image_hu, attention, spacing_zyx, overlap, skip_empty_attention,
                                          restrict_to_body, body_channel, body_margin_mm, sw_batch_size)
        labels = np.zeros(np.asarray(image_hu).shape[1:], dtype=np.uint8)
        labels[box] = torch.argmax(logits, dim=0).numpy().astype(np.uint8)
        stats.seconds = time.perf_counter() - t0
        self._log(stats)
        return labels, stats


def model_inputs(registered: Any, model: SegmentationModel) -> tuple[np.ndarray, sitk.Image]:
    """The model's input channels [C, Z, Y, X] (HU) on its working grid, from
    :class:`lnmet.types.RegisteredPhases`, and that grid. The registered working images are used
    when they already have the model's spacing; otherwise both phases are resampled onto a working
    grid at the model's spacing (the arterial one through the registration transform). In
    single-phase mode the venous image fills every channel."""
    spacing = model.spacing_mm
    venous_w = registered.working_venous
    arterial_w = registered.working_arterial
    if not all(abs(a - b) <= 1e-3 * b for a, b in zip(venous_w.GetSpacing(), spacing)):
        grid = working_grid(registered.reference, spacing)
        venous_w = resample_image(registered.venous.image, grid)
        if not registered.single_phase and registered.arterial is not None:
            arterial_w = resample_image(registered.arterial.image, grid, registered.transform)
    venous = sitk.GetArrayFromImage(venous_w).astype(np.float32)
    if registered.single_phase or arterial_w is None:
        arterial = venous
    else:
        arterial = sitk.GetArrayFromImage(arterial_w).astype(np.float32)
        if arterial.shape != venous.shape:
            raise ValueError(f"registered phases: arterial working image {arterial.shape} and venous "
                             f"{venous.shape} differ in size")
    names = model.channel_names
    channels = []
    for i, name in enumerate(names):
        low = name.lower()
        if "arterial" in low:
            channels.append(arterial)
        elif "venous" in low:
            channels.append(venous)
        else:
            raise ValueError(f"model {model.name}: unknown input channel {name!r} (expected *arterial* or *venous*)")
    grid = sitk.Image(venous_w.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(venous_w)
    return np.stack(channels), grid


def labels_to_grid(labels: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """A label map (uint8) moved onto another grid (e.g. working -> reference) with smooth
    boundaries: each label's indicator is linearly interpolated inside its own bounding box and a
    voxel takes the label with the largest value above 0.5 (0 elsewhere). Much faster than
    ``sitkLabelGaussian`` on a 512 x 512 x 200 grid, and smoother than nearest neighbour."""
    arr = sitk.GetArrayViewFromImage(labels)
    size_zyx = grid.GetSize()[::-1]
    out = np.zeros(size_zyx, dtype=np.uint8)
    best = np.full(size_zyx, 0.5, dtype=np.float32)
    for value in np.unique(arr):
        if value == 0:
            continue
        box = ndimage.find_objects((arr == value).astype(np.uint8))[0]
        lo = [max(0, s.start - 2) for s in box]
        hi = [min(n, s.stop + 2) for s, n in zip(box, arr.shape)]
        indicator = sitk.GetImageFromArray((arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == value).astype(np.float32))
        indicator.SetSpacing(labels.GetSpacing())
        indicator.SetDirection(labels.GetDirection())
        indicator.SetOrigin(labels.TransformIndexToPhysicalPoint([int(lo[2]), int(lo[1]), int(lo[0])]))
        corners = np.array([[z, y, x] for z in (lo[0] - 1, hi[0]) for y in (lo[1] - 1, hi[1]) for x in (lo[2] - 1, hi[2])],
                           dtype=np.float64)
        ref_idx = physical_to_index(grid, index_to_physical(labels, corners))
        r_lo = np.clip(np.floor(ref_idx.min(axis=0)).astype(int), 0, size_zyx)
        r_hi = np.clip(np.ceil(ref_idx.max(axis=0)).astype(int) + 1, 0, size_zyx)
        if np.any(r_hi <= r_lo):
            continue
        sub = sitk.Image([int(v) for v in (r_hi - r_lo)[::-1]], sitk.sitkFloat32)
        sub.SetSpacing(grid.GetSpacing())
        sub.SetDirection(grid.GetDirection())
        sub.SetOrigin(grid.TransformIndexToPhysicalPoint([int(v) for v in r_lo[::-1]]))
        prob = sitk.GetArrayFromImage(sitk.Resample(indicator, sub, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))
        region = tuple(slice(a, b) for a, b in zip(r_lo, r_hi))
        win = prob > best[region]
        best[region][win] = prob[win]
        out[region][win] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(grid)
    return img


def segment_registered(registered: Any, model: SegmentationModel,
                       postprocess: Any = None) -> tuple[np.ndarray, sitk.Image, sitk.Image]:
    """Run a segmentation model on registered phases: the raw label array, then the (optionally
    post-processed, e.g. largest component) label map on the working grid and on the reference grid."""
    channels, grid = model_inputs(registered, model)
    labels, _ = model.segment(channels, spacing_zyx=grid.GetSpacing()[::-1])
    kept = postprocess(labels) if postprocess is not None else labels
    working = sitk.GetImageFromArray(kept)
    working.CopyInformation(grid)
    return labels, working, labels_to_grid(working, registered.reference)


def resolve_model_path(name: str, model_path: str | Path | None = None, app_context: Any = None) -> Path:
    """The model file of ``name``: ``model_path`` when given (a file, or a folder holding
    ``<name>/model.ts``), else the app context's model folder (MONAI Deploy named-model layout
    ``<models>/<name>/model.ts``, or the SDK's loaded model of that name)."""
    candidates: list[Path] = []
    if model_path:
        p = Path(model_path)
        candidates = [p] if p.is_file() or p.suffix else [p / name / "model.ts", p / "model.ts"]
    elif app_context is not None:
        models = getattr(app_context, "models", None)
        try:
            found = models.get(name) if models is not None else None
        except Exception:  # the SDK's model registry raises for unknown names in some versions
            found = None
        if found is not None and getattr(found, "path", None):
            fp = Path(found.path)
            candidates.append(fp if fp.is_file() else fp / "model.ts")
        root = getattr(app_context, "model_path", "") or ""
        if root:
            candidates.append(Path(root) / name / "model.ts")
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates) or "no model_path and no app context given"
    raise FileNotFoundError(f"model '{name}' not found ({where})")
