"""The instance-wise LN identification network (Zheng et al. 2024, section 3.1.2 and Appendix D).

The LN segmentation backbone (:class:`~lnmet.networks.segmentation.SegmentationUNet`, attention-gated
when the segmentation model was) with a classification head on the output of its final decoder
block: global average pooling, FC 32, leaky ReLU, FC 2. The backbone is initialised from the trained
LN segmentation model: the weights are read from the exported TorchScript model file
(``models/ln_seg/model.ts``) through :func:`lnmet.networks.segmentation.load_segmentation_unet`, so
the bundled file is the only thing needed; the whole network is then fine-tuned.

Inputs: the 2-channel image crop [B, 2, Z, Y, X] (normalised, arterial and venous) centred on a node
and the matching attention crop [B, 1, Z, Y, X]. Output: logits [B, 2] (negative, positive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lnmet.networks.segmentation import SegmentationUNet, load_segmentation_unet

# The paper's crop (voxels, x y z) at its spacing 0.68 x 0.68 x 0.80 mm.
PAPER_CROP_SIZE = (96, 96, 80)
PAPER_SPACING_MM = (0.68, 0.68, 0.80)


class LNClassifier(nn.Module):
    """LN segmentation backbone + classification head (GAP, FC hidden, leaky ReLU, FC classes)."""

    def __init__(self, backbone: SegmentationUNet, hidden: int = 32, num_classes: int = 2):
        super().__init__()
        if not isinstance(backbone, SegmentationUNet):
            raise TypeError(f"LNClassifier needs a SegmentationUNet backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.hidden = int(hidden)
        self.num_classes = int(num_classes)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Linear(backbone.filters[0], self.hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(self.hidden, self.num_classes),
        )

    @property
    def uses_attention(self) -> bool:
        return self.backbone.attention

    def forward(self, x: Tensor, attention: Optional[Tensor] = None) -> Tensor:
        """Logits [B, num_classes]; ``attention`` is ignored by a backbone without attention."""
        feat = self.backbone.decoder_features(x, attention if self.backbone.attention else None)
        return self.head(torch.flatten(self.pool(feat), 1))

    def architecture(self, crop_size_xyz: tuple[int, int, int] | None = None) -> dict[str, Any]:
        """Constructor arguments as stored in the model metadata."""
        arch = {"type": "LNClassifier", "backbone": self.backbone.architecture(),
                "head": {"pooling": "global average", "hidden": self.hidden, "activation": "leakyrelu(0.01)",
                         "num_classes": self.num_classes}}
        if crop_size_xyz is not None:
            arch["crop_size"] = [int(v) for v in crop_size_xyz]
        return arch

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "LNClassifier":
        if arch.get("type") != "LNClassifier":
            raise ValueError(f"architecture type is {arch.get('type')!r}, expected 'LNClassifier'")
        head = arch.get("head", {})
        return cls(SegmentationUNet.from_architecture(arch["backbone"]), hidden=int(head.get("hidden", 32)),
                   num_classes=int(head.get("num_classes", 2)))

    @classmethod
    def from_segmentation_model(cls, path: str | Path, hidden: int = 32) -> tuple["LNClassifier", dict[str, Any]]:
        """A classifier whose backbone holds the weights of the LN segmentation model file
        ``path``; returns it and that file's metadata."""
        backbone, metadata = load_segmentation_unet(path)
        backbone.train()
        return cls(backbone, hidden=hidden), metadata


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
