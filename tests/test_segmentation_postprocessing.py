"""Post-processing of the tumour mask: one primary tumour per patient."""

import numpy as np

from operators.pdac_segmentation import largest_component


def test_largest_component_keeps_only_the_biggest_island():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    mask[12:14, 12:14, 12:14] = True  # 8 voxels, separate
    mask[9, 9, 9] = True  # diagonal neighbour of nothing: separate single voxel
    out = largest_component(mask)
    assert out.dtype == np.uint8
    assert out.sum() == 216 and out[2:8, 2:8, 2:8].all() and not out[12:14, 12:14, 12:14].any()


def test_diagonal_voxels_belong_to_the_same_component():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True
    mask[5, 5, 0] = True
    assert largest_component(mask).sum() == 3


def test_empty_mask_stays_empty():
    assert largest_component(np.zeros((4, 4, 4), bool)).sum() == 0
