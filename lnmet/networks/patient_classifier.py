"""The patient-level LN metastasis classifier (Zheng et al. 2024, section 3.2, Eq. 7, Appendix D).

One 2D tumour patch at a time (the 9 patches of a patient are averaged by the caller):

- **Backbone**: MONAI's ResNet18 (``monai.networks.nets.ResNet``, basic blocks [2, 2, 2, 2],
  ``spatial_dims=2``, 7x7 stride-2 "Conv1", max pooling). The paper starts from ImageNet weights;
  none are available here (no model hub), so it is trained from scratch. ``block_inplanes`` is
  configurable: the paper preset is full width (64, 128, 256, 512); the bundled model is narrower.
- **Side branch** on the tumour mask: 3x3 convolution (stride of Conv1) + ReLU giving a map of the
  Conv1 feature's shape, multiplied element-wise with the Conv1 output. Weights start at 0 and
  biases at 1, so at initialisation the branch outputs 1 everywhere and the backbone is unchanged.
- **Texture Encoding Layer** (Zhang et al. 2017, Deep TEN) on the Layer4 feature: 1x1 convolution
  (+BN, ReLU) to 64 dimensions, 8 learnable codewords with learnable smoothing factors,
  soft-assignment residual encoding summed over positions, BN + ReLU, flattened to 8 x 64 = 512
  units and L2-normalised.
- **Fusion** (Eq. 7): ``F = [GAP(Layer4), TEL]`` (512 + 512 = 1024 units at full width);
  ``F_comb = FC(BN(v)) + F`` with ``v`` the volume (mm^3) of the largest positive LN; FC to 2
  classes. In ``tumour_only`` mode (the paper's ClsfromPDAC) there is no volume branch.

``forward(image, mask, volume)`` always takes the three inputs (the volume is ignored in
``tumour_only`` mode) so that every exported model has the same interface.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import Tensor, nn

from lnmet.model_io import LoadedModel

MODES = ("combined", "tumour_only", "nodes_only")
PAPER_BLOCK_INPLANES = (64, 128, 256, 512)


class TextureEncoding(nn.Module):
    """Deep TEN's encoding layer: residuals of the features to ``codewords`` learnable codewords,
    soft-assigned with learnable smoothing factors, aggregated over all positions.

    Input [B, D, H, W]; output [B, K, D] (K codewords, D dimensions)."""

    def __init__(self, dim: int, codewords: int):
        super().__init__()
        self.dim = int(dim)
        self.num_codewords = int(codewords)
        bound = 1.0 / math.sqrt(self.num_codewords * self.dim)
        self.codewords = nn.Parameter(torch.empty(self.num_codewords, self.dim).uniform_(-bound, bound))
        # smoothing factors, negative so that nearer codewords get larger weights
        self.scale = nn.Parameter(torch.empty(self.num_codewords).uniform_(-1.0, 0.0))

    def forward(self, x: Tensor) -> Tensor:
        b, d = x.shape[0], x.shape[1]
        feats = x.reshape(b, d, -1).transpose(1, 2)  # [B, N, D]
        residual = feats.unsqueeze(2) - self.codewords.view(1, 1, self.num_codewords, self.dim)  # [B,N,K,D]
        weights = torch.softmax(self.scale.view(1, 1, -1) * residual.pow(2).sum(-1), dim=2)  # [B,N,K]
        return (weights.unsqueeze(-1) * residual).sum(1)  # [B, K, D]


class TextureEncodingLayer(nn.Module):
    """The TEL head: 1x1 conv (+BN, ReLU) to ``dim``, encoding, BN + ReLU, flatten, L2-normalise.
    Output [B, codewords * dim] (8 x 64 = 512 by default)."""

    def __init__(self, in_channels: int, dim: int = 64, codewords: int = 8):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                    nn.ReLU(inplace=True))
        self.encoding = TextureEncoding(dim, codewords)
        self.post = nn.Sequential(nn.BatchNorm1d(codewords), nn.ReLU(inplace=True))
        self.out_features = dim * codewords

    def forward(self, x: Tensor) -> Tensor:
        e = self.post(self.encoding(self.reduce(x)))
        return F.normalize(torch.flatten(e, 1), p=2.0, dim=1)


class PatientClassifier(nn.Module):
    """ResNet18 + mask side branch + TEL (+ largest-positive-LN volume, Eq. 7) -> 2 logits."""

    def __init__(self, in_channels: int = 1, block_inplanes: Sequence[int] = PAPER_BLOCK_INPLANES,
                 mode: str = "combined", tel_dim: int = 64, tel_codewords: int = 8, num_classes: int = 2):
        super().__init__()
        if mode not in ("combined", "tumour_only"):
            raise ValueError(f"PatientClassifier mode must be 'combined' or 'tumour_only' "
                             f"('nodes_only' has no network), got {mode!r}")
        if len(block_inplanes) != 4:
            raise ValueError(f"block_inplanes needs 4 widths (ResNet18 stages), got {list(block_inplanes)}")
        self.in_channels = int(in_channels)
        self.block_inplanes = [int(v) for v in block_inplanes]
        self.mode = mode
        self.tel_dim, self.tel_codewords, self.num_classes = int(tel_dim), int(tel_codewords), int(num_classes)
        self.resnet = ResNet("basic", [2, 2, 2, 2], self.block_inplanes, spatial_dims=2,
                             n_input_channels=self.in_channels, conv1_t_size=7, conv1_t_stride=2,
                             feed_forward=False)
        conv1 = self.resnet.conv1
        self.side_branch = nn.Sequential(
            nn.Conv2d(1, conv1.out_channels, kernel_size=3, stride=conv1.stride, padding=1),
            nn.ReLU(inplace=False),
        )
        nn.init.zeros_(self.side_branch[0].weight)
        nn.init.ones_(self.side_branch[0].bias)
        c4 = self.block_inplanes[3]  # basic blocks: expansion 1
        self.tel = TextureEncodingLayer(c4, self.tel_dim, self.tel_codewords)
        self.feature_dim = c4 + self.tel.out_features
        self.volume_branch = (nn.Sequential(nn.BatchNorm1d(1), nn.Linear(1, self.feature_dim))
                              if mode == "combined" else None)
        self.fc = nn.Linear(self.feature_dim, self.num_classes)

    def conv1_feature(self, image: Tensor, mask: Tensor) -> Tensor:
        """The Conv1 output multiplied by the side branch on the mask."""
        return self.resnet.conv1(image) * self.side_branch(mask)

    def features(self, image: Tensor, mask: Tensor) -> Tensor:
        """``F`` = [GAP(Layer4), TEL(Layer4)], [B, feature_dim]."""
        r = self.resnet
        x = r.act(r.bn1(self.conv1_feature(image, mask)))
        x = r.maxpool(x)
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return torch.cat([torch.flatten(r.avgpool(x), 1), self.tel(x)], dim=1)

    def forward(self, image: Tensor, mask: Tensor, volume: Tensor) -> Tensor:
        """Logits [B, 2] from image patches [B, C, H, W], mask patches [B, 1, H, W] and the
        largest positive LN volume [B, 1] in mm^3 (ignored in ``tumour_only`` mode)."""
        f = self.features(image, mask)
        if self.volume_branch is not None:
            f = f + self.volume_branch(volume.reshape(-1, 1).to(f.dtype))
        return self.fc(f)

    def architecture(self) -> dict[str, Any]:
        return {"type": "PatientClassifier", "backbone": "monai ResNet18 (basic, [2,2,2,2]), 2D",
                "in_channels": self.in_channels, "block_inplanes": list(self.block_inplanes),
                "mode": self.mode, "tel_dim": self.tel_dim, "tel_codewords": self.tel_codewords,
                "feature_dim": self.feature_dim, "num_classes": self.num_classes,
                "pretrained": "none (no ImageNet weights available offline; trained from scratch)"}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "PatientClassifier":
        if arch.get("type") != "PatientClassifier":
            raise ValueError(f"architecture type is {arch.get('type')!r}, expected 'PatientClassifier'")
        return cls(in_channels=arch["in_channels"], block_inplanes=arch["block_inplanes"], mode=arch["mode"],
                   tel_dim=arch.get("tel_dim", 64), tel_codewords=arch.get("tel_codewords", 8),
                   num_classes=arch.get("num_classes", 2))


# ------------------------------------------------------------------------------------------------
# The nodes-only rule (ClsbyLNSeg) and the model file wrapper used at inference
# ------------------------------------------------------------------------------------------------

def nodes_only_score(volume_mm3: float | np.ndarray, threshold_mm3: float) -> float | np.ndarray:
    """Score in [0, 1) of the nodes-only rule (paper's ClsbyLNSeg): ``v / (v + t)`` with ``v`` the
    largest positive LN volume and ``t`` the volume threshold, so the score is 0.5 exactly at the
    threshold and ranks patients as the volume does (same AUC). Not a calibrated probability."""
    t = max(float(threshold_mm3), 1e-6)
    v = np.maximum(np.asarray(volume_mm3, dtype=np.float64), 0.0)
    out = v / (v + t)
    return float(out) if out.ndim == 0 else out


class NodesOnlyRule(nn.Module):
    """The nodes-only rule as a module with the classifier's interface (exported for
    ``--mode nodes_only``): logits [0, log(v / t)], i.e. softmax = ``nodes_only_score``."""

    def __init__(self, threshold_mm3: float):
        super().__init__()
        self.register_buffer("threshold", torch.tensor([max(float(threshold_mm3), 1e-6)]))

    def forward(self, image: Tensor, mask: Tensor, volume: Tensor) -> Tensor:
        v = volume.reshape(-1, 1).to(torch.float32).clamp_min(1e-6)
        logit = torch.log(v) - torch.log(self.threshold)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


def normalize_patches(images: np.ndarray, normalization: list[dict[str, Any]]) -> np.ndarray:
    """Normalise patches [N, C, H, W] (HU) channel by channel (:func:`lnmet.normalization.normalize_ct`)."""
    from lnmet.normalization import normalize_ct

    chw_first = np.ascontiguousarray(np.moveaxis(images, 1, 0))  # [C, N, H, W]
    return np.ascontiguousarray(np.moveaxis(normalize_ct(chw_first, normalization), 0, 1))


class PatientModel(LoadedModel):
    """A patient-level model file (``models/patient_cls/model.ts``) ready for inference."""

    def _check(self) -> None:
        metadata, path = self.metadata, self.path
        for key in ("mode", "decision_threshold", "nodes_only_threshold_mm3"):
            if key not in metadata:
                raise ValueError(f"{path or 'model'}: patient classifier metadata lacks '{key}'")
        if metadata["mode"] not in MODES:
            raise ValueError(f"{path or 'model'}: unknown mode {metadata['mode']!r} (expected one of {MODES})")

    @property
    def mode(self) -> str:
        return str(self.metadata["mode"])

    @property
    def threshold(self) -> float:
        """Decision threshold on the patient score (best balanced accuracy on validation data)."""
        return float(self.metadata["decision_threshold"])

    @property
    def nodes_only_threshold_mm3(self) -> float:
        return float(self.metadata["nodes_only_threshold_mm3"])

    @property
    def patch_size(self) -> int:
        return int(self.metadata["patch_size"][0])

    @property
    def spacing_mm(self) -> float:
        return float(self.metadata["spacing_mm"][0])

    def patches(self, venous: Any, arterial: Any | None, pdac: Any, arterial_transform: Any | None = None) -> Any:
        """The 9 tumour patches with this model's patch size and spacing (channels by name; the
        venous image fills an arterial channel in single-phase mode)."""
        from lnmet.patches import extract_tumour_patches

        images, transforms = [], []
        for name in self.channel_names:
            if "arterial" in name.lower() and arterial is not None:
                images.append(arterial)
                transforms.append(arterial_transform)
            elif "arterial" in name.lower() or "venous" in name.lower():
                images.append(venous)
                transforms.append(None)
            else:
                raise ValueError(f"{self.path}: unknown input channel {name!r} (expected *arterial* or *venous*)")
        return extract_tumour_patches(images, pdac, patch_size=self.patch_size, spacing_mm=self.spacing_mm,
                                      transforms=transforms)

    def predict_patches(self, images_hu: np.ndarray, masks: np.ndarray, volume_mm3: float) -> np.ndarray:
        """Positive probability of each patch ([N, C, P, P] HU, [N, 1, P, P] masks)."""
        x = torch.from_numpy(normalize_patches(images_hu, self.metadata["normalization"])).to(self.device)
        m = torch.from_numpy(np.asarray(masks, np.float32)).to(self.device)
        v = torch.full((x.shape[0], 1), float(volume_mm3), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            return torch.softmax(self.module(x, m, v).float(), dim=1)[:, 1].cpu().numpy()

    def predict(self, venous: Any, arterial: Any | None, pdac: Any, largest_positive_volume_mm3: float,
                arterial_transform: Any | None = None) -> tuple[float, np.ndarray]:
        """Patient score (mean of the 9 patch probabilities; the nodes-only score in ``nodes_only``
        mode) and the per-patch probabilities. Raises :class:`lnmet.patches.NoTumourError` when the
        PDAC mask is empty (the caller falls back to the nodes-only rule)."""
        if self.mode == "nodes_only":
            return float(nodes_only_score(largest_positive_volume_mm3, self.nodes_only_threshold_mm3)), np.zeros(0)
        p = self.patches(venous, arterial, pdac, arterial_transform)
        probs = self.predict_patches(p.images, p.masks, largest_positive_volume_mm3)
        return float(probs.mean()), probs
