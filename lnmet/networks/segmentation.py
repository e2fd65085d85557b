"""The segmentation network of every segmentation model: a 3D U-Net of the nnU-Net family.

Built from MONAI's DynUNet blocks (two 3x3x3 convolutions with instance norm and leaky ReLU per
block, strided-convolution down-sampling, transposed-convolution up-sampling, deep supervision
heads on the decoder blocks), as in Appendix D of Zheng et al. (IJCV 2024).

With ``attention=True`` the network is the paper's attention-guided LN segmentation network (Eq. 3):
the decoder feature right before *every* output head is multiplied voxel-wise by the attention map
(a second input, [B, 1, Z, Y, X] at full resolution, area-down-sampled to each head's
resolution). The feature handed on to the next decoder block is not gated. A consequence used by
:mod:`lnmet.inference`: where the attention is 0, the final output is exactly the final head's bias.

Tensor layout: [B, C, Z, Y, X] (numpy/SimpleITK array order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import Tensor, nn

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def _as_triplet(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"SegmentationUNet: each {what} must be an int or 3 ints (z, y, x), got {value!r}")
    return t  # type: ignore[return-value]


class SegmentationUNet(nn.Module):
    """nnU-Net-style 3D U-Net with optional attention gating before each output head.

    Args:
        in_channels: image channels (2: arterial, venous).
        out_channels: classes including background.
        filters: channels of each encoder level (e.g. 32, 64, 128, 256, 320, 320); the decoder
            has ``len(filters) - 1`` blocks with the mirrored widths.
        strides: stride of the first convolution of each encoder block (``strides[0]`` is usually
            1), an int or (z, y, x) per level; the up-sampling kernel and stride mirror them.
        attention: gate the decoder feature before every head by the attention map (paper Eq. 3).
        deep_supervision: in training mode, return the logits of every decoder block.
    """

    def __init__(self, in_channels: int, out_channels: int, filters: Sequence[int],
                 strides: Sequence[int | Sequence[int]], attention: bool = False,
                 deep_supervision: bool = True, kernel_size: int = 3):
        super().__init__()
        if len(filters) != len(strides):
            raise ValueError(f"SegmentationUNet: filters ({len(filters)}) and strides ({len(strides)}) "
                             "must have one entry per encoder level")
        if len(filters) < 2:
            raise ValueError("SegmentationUNet: at least 2 encoder levels are needed")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.filters = [int(f) for f in filters]
        self.strides = [_as_triplet(s, "stride") for s in strides]
        self.attention = bool(attention)
        self.deep_supervision = bool(deep_supervision)
        self.kernel_size = int(kernel_size)

        chans = [self.in_channels] + self.filters
        self.encoder = nn.ModuleList(
            UnetBasicBlock(3, chans[i], chans[i + 1], kernel_size=kernel_size, stride=self.strides[i],
                           norm_name=NORM, act_name=ACT)
            for i in range(len(self.filters))
        )
        # decoder[i] brings level i+1 up to level i (so decoder[0] is the last, full-resolution block)
        self.decoder = nn.ModuleList(
            UnetUpBlock(3, self.filters[i + 1], self.filters[i], kernel_size=kernel_size, stride=1,
                        upsample_kernel_size=self.strides[i + 1], norm_name=NORM, act_name=ACT)
            for i in range(len(self.filters) - 1)
        )
        self.heads = nn.ModuleList(UnetOutBlock(3, self.filters[i], self.out_channels)
                                   for i in range(len(self.filters) - 1))

    @property
    def num_outputs(self) -> int:
        """Number of deep-supervision outputs (one per decoder block)."""
        return len(self.heads)

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments, as stored in the model metadata."""
        return {
            "type": "SegmentationUNet",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "filters": list(self.filters),
            "strides": [list(s) for s in self.strides],
            "attention": self.attention,
            "deep_supervision": self.deep_supervision,
            "kernel_size": self.kernel_size,
            "norm": "instance(affine)",
            "activation": "leakyrelu(0.01)",
            "upsampling": "transposed convolution",
            "downsampling": "strided convolution",
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> "SegmentationUNet":
        """Rebuild the network from a metadata ``architecture`` entry."""
        try:
            return cls(arch["in_channels"], arch["out_channels"], arch["filters"], arch["strides"],
                       attention=bool(arch.get("attention", False)),
                       deep_supervision=bool(arch.get("deep_supervision", True)),
                       kernel_size=int(arch.get("kernel_size", 3)))
        except KeyError as exc:
            raise ValueError(f"model architecture lacks the key {exc.args[0]!r}") from None

    def _gate(self, feature: Tensor, attention: Optional[Tensor], level: int) -> Tensor:
        """Eq. 3: feature * attention, the attention area-down-sampled to the level's resolution."""
        if not self.attention:
            return feature
        if attention is None:
            raise ValueError("SegmentationUNet(attention=True) needs the attention map as second input")
        if level > 0:
            attention = F.interpolate(attention, size=feature.shape[2:], mode="area")
        return feature * attention

    def _decode(self, x: Tensor, attention: Optional[Tensor], all_levels: bool) -> tuple[Tensor, list[Tensor]]:
        skips: list[Tensor] = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        outputs: list[Tensor] = []
        gated = h
        for level in range(len(self.decoder) - 1, -1, -1):
            h = self.decoder[level](h, skips[level])
            if all_levels or level == 0:
                gated = self._gate(h, attention, level)
                outputs.append(self.heads[level](gated))
        outputs.reverse()  # highest resolution first
        return gated, outputs

    def forward(self, x: Tensor, attention: Optional[Tensor] = None) -> Tensor | list[Tensor]:
        """Logits [B, out_channels, Z, Y, X]; in training mode with deep supervision, the list of
        logits of every decoder block, highest resolution first."""
        all_levels = self.training and self.deep_supervision
        _, outputs = self._decode(x, attention, all_levels)
        return outputs if all_levels else outputs[0]

    def decoder_features(self, x: Tensor, attention: Optional[Tensor] = None) -> Tensor:
        """The final decoder block's output [B, filters[0], Z, Y, X] (gated when attention=True)."""
        skips: list[Tensor] = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        for level in range(len(self.decoder) - 1, -1, -1):
            h = self.decoder[level](h, skips[level])
        return self._gate(h, attention, 0)


def load_segmentation_unet(path: str | Path, device: str | torch.device = "cpu"
                           ) -> tuple[SegmentationUNet, dict[str, Any]]:
    """An eager :class:`SegmentationUNet` with the weights of a model file (e.g. to initialise the LN
    identification backbone from the trained LN segmentation model), and the file's metadata."""
    from lnmet.model_io import load_model

    scripted, metadata = load_model(path, device="cpu")
    arch = metadata.get("architecture", {})
    if arch.get("type") != "SegmentationUNet":
        raise ValueError(f"{path}: model architecture is {arch.get('type')!r}, expected 'SegmentationUNet'")
    net = SegmentationUNet.from_architecture(arch)
    missing, unexpected = net.load_state_dict(scripted.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{path}: model weights lack {len(missing)} tensors of SegmentationUNet, e.g. {missing[0]}")
    return net.to(device), metadata
