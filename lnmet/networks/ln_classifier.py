"""The instance-wise LN identification network (Zheng et al. 2024, section 3.1.2 and Appendix D).

The LN segmentation backbone (:class:`~lnmet.networks.segmentation.SegmentationUNet`, attention-gated
when the segmentation model was) with a classification head on the output of its final decoder
block: global average pooling, FC 32, leaky ReLU, FC 2. The backbone is initialised from the trained
LN segmentation model: the weights are read from the exported TorchScript model file
(``models/ln_seg/model.ts``) through :func:`lnmet.networks.segmentation.load_segmentation_unet`, so
the bundled file is the only thing needed; the whole network is then fine-tuned.

Departure from the paper, the head's pooling (``pooling``):

- ``"average"``: the paper's global average pooling.
- ``"average+centre"``: the global average and a Gaussian-weighted average centred on the crop
  (sigma 12% of the crop). A node of 300 mm^3 is ~90 of the 110,592 voxels of a 48^3 crop at
  1.5 mm; with the plain global average our small (8-channel) backbone did not learn at all in the
  CPU training budget (validation AUC 0.47-0.56 after 100-130 iterations). The earlier bundled model.
- ``"average+node"``: the global average and the average over the node's own instance mask (a
  third input: the mask crop). This gives the head the features of the node itself, whatever its
  size and shape, instead of a fixed central blob that mixes node and surroundings. The mask is the
  ground-truth instance in training and the segmented instance at inference (as the crops).
- ``descriptors=True`` (with ``average+node``; the bundled model): the node's measurements from its
  mask and image crop (:class:`NodeDescriptors`: log volume, axial and 3D axis ratios, mean and SD of
  each phase inside the node), standardised by the training nodes' statistics, beside the pooled
  features. The paper feeds the LN volume to its patient classifier; here the node-level cues a
  radiologist reads (size, roundness, heterogeneity) reach the identification head the same way.
  With node pooling alone the backbone learnt slowly (validation AUC 0.54 / 0.60 / 0.61 at 100 /
  200 / 300 iterations); with the descriptors it reached 0.89 by iteration 100.

Inputs: the 2-channel image crop [B, 2, Z, Y, X] (normalised, arterial and venous) centred on a node,
the matching attention crop [B, 1, Z, Y, X] and, for ``average+node``, the node's mask crop
[B, 1, Z, Y, X] (1 inside the node). Output: logits [B, 2] (negative, positive).

Also here: :class:`LNIdentifier` (a model file ready for batched inference on node crops),
:func:`node_centres` (instance centroids of the reference grid as voxel positions of a working
grid) and :class:`LNPipeline`, the whole LN chain used by training and evaluation scripts
(attention -> LN segmentation -> instances -> identification -> largest positive LN volume),
the same steps as the operators of the application.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
import torch.nn.functional as F
from torch import Tensor, nn

from lnmet.geometry import index_to_physical, physical_to_index, resample_image, resample_labels, working_grid
from lnmet.model_io import LoadedModel
from lnmet.networks.segmentation import SegmentationUNet, load_segmentation_unet
from lnmet.normalization import normalize_ct
from lnmet.patches import crop_centred

log = logging.getLogger(__name__)

# The paper's crop (voxels, x y z) at its spacing 0.68 x 0.68 x 0.80 mm.
PAPER_CROP_SIZE = (96, 96, 80)
PAPER_SPACING_MM = (0.68, 0.68, 0.80)


POOLINGS = ("average", "average+centre", "average+node")
CENTRE_SIGMA = 0.12  # of the crop size, per axis


class CentrePooling(nn.Module):
    """Average of [B, C, Z, Y, X] weighted by a Gaussian centred on the volume -> [B, C, 1, 1, 1]."""

    def __init__(self, sigma_fraction: float = CENTRE_SIGMA):
        super().__init__()
        self.sigma_fraction = float(sigma_fraction)

    def forward(self, x: Tensor) -> Tensor:
        w = None
        for axis, n in enumerate(x.shape[2:]):
            t = torch.arange(n, device=x.device, dtype=x.dtype) - (n - 1) / 2.0
            g = torch.exp(-0.5 * (t / (self.sigma_fraction * n)) ** 2)
            shape = [1, 1, 1]
            shape[axis] = n
            g = g.reshape(shape)
            w = g if w is None else w * g
        w = w / w.sum()
        return (x * w).sum(dim=(2, 3, 4), keepdim=True)


class MaskPooling(nn.Module):
    """Average of [B, C, Z, Y, X] over a mask [B, 1, Z, Y, X] -> [B, C, 1, 1, 1] (zeros for an empty mask)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        w = mask.to(x.dtype)
        total = w.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
        return (x * w).sum(dim=(2, 3, 4), keepdim=True) / total


DESCRIPTOR_NAMES = ("log_volume", "axial_axis_ratio", "axis_ratio_3d")  # then mean and SD per image channel


class NodeDescriptors(nn.Module):
    """Measurements of the node in the crop, from its mask and the normalised image: log volume,
    axial short/long axis ratio and 3D smallest/largest axis ratio (from the second moments of the
    mask), mean and SD of every image channel inside the node's core (the mask less its outer voxel
    layer, when at least ``MIN_CORE_VOXELS`` remain: a segmented node whose border reaches one voxel
    into the fat around it has the intensities of the node, not of the fat). Standardised by the
    training nodes' mean and SD (buffers set by :meth:`set_statistics` before training).
    [B, C, Z, Y, X] image and [B, 1, Z, Y, X] mask -> [B, 3 + 2C]."""

    MIN_CORE_VOXELS = 4

    def __init__(self, in_channels: int, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        n = len(DESCRIPTOR_NAMES) + 2 * int(in_channels)
        self.register_buffer("spacing_zyx", torch.tensor([float(v) for v in spacing_zyx]))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    @property
    def size(self) -> int:
        return int(self.mean.numel())

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=1e-6))

    def raw(self, x: Tensor, mask: Tensor) -> Tensor:
        """Unstandardised descriptors [B, 3 + 2C]."""
        m = mask.to(x.dtype)
        count = m.sum(dim=(1, 2, 3, 4)).clamp_min(1.0)
        zz, yy, xx = torch.meshgrid(*[torch.arange(n, device=x.device, dtype=x.dtype) * self.spacing_zyx[i]
                                      for i, n in enumerate(x.shape[2:])], indexing="ij")
        coords = torch.stack([zz, yy, xx]).reshape(1, 3, -1)  # [1, 3, N] mm
        w = m.reshape(m.shape[0], 1, -1)  # [B, 1, N]
        centre = (coords * w).sum(-1, keepdim=True) / count.view(-1, 1, 1)
        d = (coords - centre) * w.sqrt()
        cov = d @ d.transpose(1, 2) / count.view(-1, 1, 1)  # [B, 3, 3]
        eps = 1e-3
        a, b, c = cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]  # axial (y, x) block: closed-form eigenvalues
        half_trace, root = (a + c) / 2, torch.sqrt(((a - c) / 2) ** 2 + b ** 2)
        axial = torch.sqrt((half_trace - root).clamp_min(0) + eps) / torch.sqrt(half_trace + root + eps)
        ev = torch.linalg.eigvalsh(cov + eps * torch.eye(3, dtype=x.dtype, device=x.device))
        ratio3d = torch.sqrt(ev[:, 0].clamp_min(eps) / ev[:, 2].clamp_min(eps))
        log_volume = torch.log(count * self.spacing_zyx.prod())
        core = -F.max_pool3d(-m, kernel_size=3, stride=1, padding=1)  # erosion by one voxel (26-neighbourhood)
        core_count = core.sum(dim=(1, 2, 3, 4))
        inner = torch.where((core_count >= self.MIN_CORE_VOXELS).view(-1, 1, 1, 1, 1), core, m)
        n_inner = inner.sum(dim=(1, 2, 3, 4)).clamp_min(1.0).view(-1, 1)
        mean = (x * inner).sum(dim=(2, 3, 4)) / n_inner
        var = (((x - mean[:, :, None, None, None]) ** 2) * inner).sum(dim=(2, 3, 4)) / n_inner
        return torch.cat([log_volume[:, None], axial[:, None], ratio3d[:, None], mean, torch.sqrt(var + 1e-6)], dim=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return (self.raw(x, mask) - self.mean) / self.std


class LNClassifier(nn.Module):
    """LN segmentation backbone + classification head (GAP, FC hidden, leaky ReLU, FC classes)."""

    def __init__(self, backbone: SegmentationUNet, hidden: int = 32, num_classes: int = 2,
                 pooling: str = "average+centre", descriptors: bool = False,
                 spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {POOLINGS}")
        if descriptors and pooling != "average+node":
            raise ValueError("node descriptors need the node's mask: pooling 'average+node'")
        if not isinstance(backbone, SegmentationUNet):
            raise TypeError(f"LNClassifier needs a SegmentationUNet backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.hidden = int(hidden)
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.centre_pool = CentrePooling() if pooling == "average+centre" else None
        self.node_pool = MaskPooling() if pooling == "average+node" else None
        self.descriptors = NodeDescriptors(backbone.in_channels, spacing_zyx) if descriptors else None
        n_features = backbone.filters[0] * (1 if pooling == "average" else 2)
        if self.descriptors is not None:
            n_features += self.descriptors.size
        self.head = nn.Sequential(
            nn.Linear(n_features, self.hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(self.hidden, self.num_classes),
        )

    @property
    def uses_attention(self) -> bool:
        return self.backbone.attention

    @property
    def uses_node_mask(self) -> bool:
        return self.node_pool is not None

    def forward(self, x: Tensor, attention: Optional[Tensor] = None, node_mask: Optional[Tensor] = None) -> Tensor:
        """Logits [B, num_classes]; ``attention`` is ignored by a backbone without attention;
        ``node_mask`` is needed by (only) the ``average+node`` head."""
        feat = self.backbone.decoder_features(x, attention if self.backbone.attention else None)
        pooled = torch.flatten(self.pool(feat), 1)
        if self.centre_pool is not None:
            pooled = torch.cat([pooled, torch.flatten(self.centre_pool(feat), 1)], dim=1)
        if self.node_pool is not None:
            if node_mask is None:
                raise ValueError("the average+node head needs the node's mask crop")
            pooled = torch.cat([pooled, torch.flatten(self.node_pool(feat, node_mask), 1)], dim=1)
            if self.descriptors is not None:
                pooled = torch.cat([pooled, self.descriptors(x, node_mask)], dim=1)
        return self.head(pooled)

    def architecture(self, crop_size_xyz: tuple[int, int, int] | None = None) -> dict[str, Any]:
        """Constructor arguments as stored in the model metadata."""
        arch = {"type": "LNClassifier", "backbone": self.backbone.architecture(),
                "head": {"pooling": self.pooling, "hidden": self.hidden, "activation": "leakyrelu(0.01)",
                         "num_classes": self.num_classes}}
        if self.descriptors is not None:
            arch["head"]["descriptors"] = list(DESCRIPTOR_NAMES) + [f"{k}_channel{c}" for c in
                                                                    range(self.backbone.in_channels)
                                                                    for k in ("mean", "sd")]
            arch["head"]["descriptor_spacing_zyx"] = [float(v) for v in self.descriptors.spacing_zyx]
        if crop_size_xyz is not None:
            arch["crop_size"] = [int(v) for v in crop_size_xyz]
        return arch

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "LNClassifier":
        if arch.get("type") != "LNClassifier":
            raise ValueError(f"architecture type is {arch.get('type')!r}, expected 'LNClassifier'")
        head = arch.get("head", {})
        pooling = head.get("pooling", "average")
        return cls(SegmentationUNet.from_architecture(arch["backbone"]), hidden=int(head.get("hidden", 32)),
                   num_classes=int(head.get("num_classes", 2)),
                   pooling="average" if pooling == "global average" else pooling,
                   descriptors="descriptors" in head, spacing_zyx=head.get("descriptor_spacing_zyx", (1.0, 1.0, 1.0)))

    @classmethod
    def from_segmentation_model(cls, path: str | Path, hidden: int = 32, pooling: str = "average+centre",
                                descriptors: bool = False) -> tuple["LNClassifier", dict[str, Any]]:
        """A classifier whose backbone holds the weights of the LN segmentation model file
        ``path``; returns it and that file's metadata."""
        backbone, metadata = load_segmentation_unet(path)
        backbone.train()
        spacing_zyx = tuple(float(v) for v in metadata["spacing_mm"][::-1])
        return cls(backbone, hidden=hidden, pooling=pooling, descriptors=descriptors,
                   spacing_zyx=spacing_zyx), metadata


def total_stride(backbone: SegmentationUNet) -> tuple[int, int, int]:
    """Product of the backbone's strides per axis (z, y, x): crop sizes must be multiples of it."""
    out = [1, 1, 1]
    for s in backbone.strides:
        out = [a * b for a, b in zip(out, s)]
    return tuple(out)  # type: ignore[return-value]


def default_crop_size(backbone: SegmentationUNet, spacing_mm_xyz: tuple[float, float, float]
                      ) -> tuple[int, int, int]:
    """Crop size (x, y, z voxels) covering at least the paper's physical crop (96x96x80 voxels at
    0.68x0.68x0.80 mm, about 65x65x64 mm) at ``spacing_mm_xyz``, rounded up to a multiple of the
    backbone's total stride."""
    stride_xyz = total_stride(backbone)[::-1]
    out = []
    for n, s_paper, s, k in zip(PAPER_CROP_SIZE, PAPER_SPACING_MM, spacing_mm_xyz, stride_xyz):
        vox = n * s_paper / s
        out.append(int(k * max(1, -(-int(round(vox)) // k))))
    return tuple(out)  # type: ignore[return-value]


def make_crops(image_hu: np.ndarray, attention: np.ndarray | None, centres_zyx: Sequence[Sequence[float]],
               crop_zyx: Sequence[int], normalization: list[dict[str, Any]], pad_hu: float = -1024.0,
               copy_channel: Sequence[tuple[int, int] | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image crops [N, C, z, y, x] and attention crops [N, 1, z, y, x] (zeros when no
    attention) centred on ``centres_zyx`` (voxel indices of the model's grid). Outside the volume
    the image is padded with ``pad_hu`` (air) before normalisation and the attention with 0.
    ``copy_channel[i] = (src, dst)`` puts channel ``src``'s HU into channel ``dst`` of crop ``i``
    before normalisation (training for single-phase mode: venous in the arterial channel)."""
    n = len(centres_zyx)
    c = image_hu.shape[0]
    imgs = np.empty((n, c) + tuple(crop_zyx), np.float32)
    atts = np.zeros((n, 1) + tuple(crop_zyx), np.float32)
    for i, centre in enumerate(centres_zyx):
        crop = crop_centred(image_hu, centre, crop_zyx, pad_hu)
        if copy_channel is not None and copy_channel[i] is not None:
            src, dst = copy_channel[i]
            crop[dst] = crop[src]
        imgs[i] = normalize_ct(crop, normalization)
        if attention is not None:
            atts[i, 0] = crop_centred(attention, centre, crop_zyx, 0.0)
    return imgs, atts


def mask_crops(labels: np.ndarray, ids: Sequence[int], centres_zyx: Sequence[Sequence[float]],
               crop_zyx: Sequence[int]) -> np.ndarray:
    """Node mask crops [N, 1, z, y, x] (float32, 1 where ``labels == ids[i]``) centred like
    :func:`make_crops`. A node lost by resampling to the model's grid keeps its centre voxel, so
    that the node pooling never averages over nothing."""
    out = np.zeros((len(centres_zyx), 1) + tuple(crop_zyx), np.float32)
    for i, (label, centre) in enumerate(zip(ids, centres_zyx)):
        out[i, 0] = crop_centred(labels, centre, crop_zyx, 0) == label
        if not out[i, 0].any():
            out[(i, 0) + tuple(s // 2 for s in crop_zyx)] = 1.0
    return out


class LNIdentifier(LoadedModel):
    """An LN identification model file (``models/ln_cls/model.ts``) ready for batched inference."""

    def _check(self) -> None:
        metadata, path = self.metadata, self.path
        if metadata.get("architecture", {}).get("type") != "LNClassifier":
            raise ValueError(f"{path or 'model'}: not an LN identification model (architecture "
                             f"{metadata.get('architecture', {}).get('type')!r}, expected 'LNClassifier')")
        if "decision_threshold" not in metadata:
            raise ValueError(f"{path or 'model'}: metadata lacks 'decision_threshold'")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.metadata["spacing_mm"])  # type: ignore[return-value]

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        return self._size_zyx()

    @property
    def uses_attention(self) -> bool:
        return bool(self.metadata["architecture"]["backbone"].get("attention", False))

    @property
    def uses_node_mask(self) -> bool:
        """Whether the head pools over the node's own mask (``average+node``): then
        :meth:`predict` needs the instance map."""
        return self.metadata["architecture"].get("head", {}).get("pooling") == "average+node"

    @property
    def threshold(self) -> float:
        """Decision threshold on the positive probability chosen on validation data."""
        return float(self.metadata["decision_threshold"])

    def predict(self, image_hu: np.ndarray, attention: np.ndarray | None, centres_zyx: Sequence[Sequence[float]],
                batch_size: int = 8, instances: np.ndarray | None = None,
                ids: Sequence[int] | None = None) -> np.ndarray:
        """Positive-class probabilities [N] of the nodes centred at ``centres_zyx`` (voxel indices of
        ``image_hu`` [C, Z, Y, X], HU on the model's grid, channels as ``channel_names``);
        ``instances`` (label map on the same grid) and the nodes' ``ids`` in it are needed by a
        model that pools over the node's mask."""
        if image_hu.ndim != 4 or image_hu.shape[0] != len(self.channel_names):
            raise ValueError(f"model {self.name}: expected [{len(self.channel_names)}, Z, Y, X] input "
                             f"({', '.join(self.channel_names)}), got {image_hu.shape}")
        if self.uses_attention and attention is None:
            raise ValueError(f"model {self.name} is attention-guided and needs the attention map")
        if attention is not None and attention.shape != image_hu.shape[1:]:
            raise ValueError(f"model {self.name}: attention shape {attention.shape} differs from the image's "
                             f"{image_hu.shape[1:]}")
        if self.uses_node_mask:
            if instances is None or ids is None or len(ids) != len(centres_zyx):
                raise ValueError(f"model {self.name} pools over each node's mask and needs the instance map and "
                                 "one instance id per centre")
            if instances.shape != image_hu.shape[1:]:
                raise ValueError(f"model {self.name}: instance map shape {instances.shape} differs from the "
                                 f"image's {image_hu.shape[1:]}")
        out = np.empty(len(centres_zyx), np.float32)
        for b0 in range(0, len(centres_zyx), max(1, batch_size)):
            centres = centres_zyx[b0:b0 + batch_size]
            imgs, atts = make_crops(image_hu, attention, centres, self.crop_zyx, self.metadata["normalization"])
            inputs = [torch.from_numpy(imgs).to(self.device), torch.from_numpy(atts).to(self.device)]
            if self.uses_node_mask:
                masks = mask_crops(instances, ids[b0:b0 + batch_size], centres, self.crop_zyx)
                inputs.append(torch.from_numpy(masks).to(self.device))
            with torch.no_grad():
                logits = self.module(*inputs)
                out[b0:b0 + len(centres)] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
        return out


def node_centres(instances: sitk.Image, grid: sitk.Image) -> tuple[list[int], np.ndarray]:
    """Ids of the instances of ``instances`` and their centroids as continuous voxel positions
    [N, (z, y, x)] of ``grid`` (e.g. the working grid the identification model runs on)."""
    arr = sitk.GetArrayViewFromImage(instances)
    ids, centres = [], []
    for idx, box in enumerate(ndimage.find_objects(arr), start=1):
        if box is None:
            continue
        zyx = np.argwhere(arr[box] == idx).mean(axis=0) + [s.start for s in box]
        ids.append(idx)
        centres.append(physical_to_index(grid, index_to_physical(instances, zyx)))
    return ids, (np.array(centres) if centres else np.zeros((0, 3)))


@dataclass
class LNPipelineResult:
    """What the LN chain found in one study (instances on the reference grid)."""

    probability: sitk.Image  # LN probability, working grid (float32)
    attention: sitk.Image  # attention map, working grid (float32)
    instances: sitk.Image  # uint16 instance map, reference grid
    ids: list[int]
    volumes_mm3: np.ndarray  # per id
    probabilities: np.ndarray  # positive-class probability per id
    positive: np.ndarray  # bool per id
    threshold: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def largest_positive_volume_mm3(self) -> float:
        """Volume of the largest positive LN (paper section 3.2); 0 when none is positive."""
        vols = self.volumes_mm3[self.positive]
        return float(vols.max()) if vols.size else 0.0


def _on_grid(image: sitk.Image, grid: sitk.Image) -> bool:
    return (image.GetSize() == grid.GetSize() and np.allclose(image.GetSpacing(), grid.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), grid.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetDirection(), grid.GetDirection(), atol=1e-5))


def channel_stack(names: Sequence[str], arterial: np.ndarray | None, venous: np.ndarray) -> np.ndarray:
    """Model input channels [C, Z, Y, X] by channel name (*arterial* / *venous*); the venous image
    fills the arterial channel in single-phase mode (``arterial`` None)."""
    out = []
    for name in names:
        low = name.lower()
        if "arterial" in low:
            out.append(venous if arterial is None else arterial)
        elif "venous" in low:
            out.append(venous)
        else:
            raise ValueError(f"unknown model input channel {name!r} (expected *arterial* or *venous*)")
    return np.stack(out).astype(np.float32, copy=False)


class LNPipeline:
    """LN segmentation model + identification model + the app.yaml thresholds, run on one study whose
    phases are co-registered on the venous (reference) grid, with an organ label map on that grid."""

    def __init__(self, segmentation: Any, identifier: LNIdentifier, probability_threshold: float,
                 min_volume_mm3: float, attention_settings: Any, positive_threshold: float | None = None,
                 min_density_hu: float | None = None, rim_fat_hu: float | None = None, min_voxels: int = 1):
        self.segmentation = segmentation  # lnmet.inference.SegmentationModel
        self.identifier = identifier
        self.probability_threshold = float(probability_threshold)
        self.min_volume_mm3 = float(min_volume_mm3)
        self.min_density_hu = None if min_density_hu is None else float(min_density_hu)
        self.rim_fat_hu = None if rim_fat_hu is None else float(rim_fat_hu)
        self.min_voxels = int(min_voxels)
        self.attention_settings = attention_settings
        self.threshold = float(identifier.threshold if positive_threshold is None else positive_threshold)

    @classmethod
    def load(cls, ln_seg_path: str | Path, ln_cls_path: str | Path, settings: Any,
             device: str | torch.device | None = None) -> "LNPipeline":
        """From the two model files and :class:`lnmet.config.Settings`."""
        from lnmet.inference import SegmentationModel

        det = settings.ln_detection
        return cls(SegmentationModel.load(ln_seg_path, device), LNIdentifier.load(ln_cls_path, device),
                   det.probability_threshold, det.min_volume_mm3, settings.attention, det.positive_threshold,
                   det.min_density_hu, det.rim_fat_hu, det.min_voxels)

    def run(self, venous: sitk.Image, arterial: sitk.Image | None, organs: sitk.Image,
            batch_size: int = 8, probability: sitk.Image | None = None) -> LNPipelineResult:
        """``venous`` (reference grid), ``arterial`` (co-registered on it, or None: single phase),
        ``organs`` (labels 1-10 on the reference grid); ``probability``: this segmentation model's LN
        probability on the working grid when already computed (e.g. cached by an evaluation)."""
        import time

        from lnmet.attention import attention_map
        from lnmet.instances import ln_instances

        seconds: dict[str, float] = {}
        t = time.perf_counter()
        grid = working_grid(venous, self.segmentation.spacing_mm)
        same = _on_grid(venous, grid)
        ven_w = venous if same else resample_image(venous, grid)
        art_w = None if arterial is None else (arterial if same else resample_image(arterial, grid))
        org_w = organs if same else resample_labels(organs, grid, smooth=False)
        attention = attention_map(org_w, self.attention_settings)
        att = sitk.GetArrayFromImage(attention)
        image = channel_stack(self.segmentation.channel_names,
                              None if art_w is None else sitk.GetArrayFromImage(art_w),
                              sitk.GetArrayFromImage(ven_w))
        seconds["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        if probability is not None:
            if not _on_grid(probability, grid):
                raise ValueError(f"LN pipeline: the given LN probability is not on the working grid "
                                 f"(size {probability.GetSize()} vs {grid.GetSize()})")
            prob = probability
        else:
            probs, _ = self.segmentation.predict_probabilities(
                image, att if self.segmentation.uses_attention else None,
                spacing_zyx=tuple(grid.GetSpacing()[::-1]))
            prob = sitk.GetImageFromArray(probs[1].astype(np.float32))
            prob.CopyInformation(grid)
        seconds["segmentation"] = time.perf_counter() - t
        t = time.perf_counter()
        instances = ln_instances(prob, venous, self.probability_threshold, self.min_volume_mm3, self.min_density_hu,
                                 self.rim_fat_hu, self.min_voxels)
        seconds["instances"] = time.perf_counter() - t
        t = time.perf_counter()
        ids, probabilities = identify_instances(self.identifier, instances, grid, image, att, batch_size)
        seconds["identification"] = time.perf_counter() - t
        counts = np.bincount(sitk.GetArrayViewFromImage(instances).ravel())
        vox = float(np.prod(venous.GetSpacing()))
        volumes = np.array([counts[i] * vox for i in ids], float)
        return LNPipelineResult(probability=prob, attention=attention, instances=instances, ids=ids,
                                volumes_mm3=volumes, probabilities=probabilities,
                                positive=probabilities >= self.threshold, threshold=self.threshold, seconds=seconds)


def identify_instances(identifier: LNIdentifier, instances: sitk.Image, grid: sitk.Image, image_hu: np.ndarray,
                       attention: np.ndarray | None, batch_size: int = 8) -> tuple[list[int], np.ndarray]:
    """Positive probabilities of every instance of ``instances`` (reference grid), from crops of
    ``image_hu`` [C, Z, Y, X] / ``attention`` [Z, Y, X] on ``grid`` (which must have the
    identification model's spacing). Returns (ids, probabilities)."""
    if not np.allclose(grid.GetSpacing(), identifier.spacing_mm, rtol=1e-3):
        raise ValueError(f"LN identification model {identifier.name} runs at {list(identifier.spacing_mm)} mm; the "
                         f"images given are at {list(grid.GetSpacing())} mm")
    ids, centres = node_centres(instances, grid)
    if not ids:
        return [], np.zeros(0, np.float32)
    labels = None
    if identifier.uses_node_mask:
        labels = sitk.GetArrayFromImage(instances if _on_grid(instances, grid)
                                        else resample_labels(instances, grid, smooth=False))
    return ids, identifier.predict(image_hu, attention if identifier.uses_attention else None, centres, batch_size,
                                   labels, ids)
