"""Networks of the product (PyTorch modules, built from MONAI blocks)."""

from lnmet.networks.segmentation import SegmentationUNet, load_segmentation_unet

__all__ = ["SegmentationUNet", "load_segmentation_unet"]
