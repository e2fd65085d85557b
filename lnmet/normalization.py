"""CT intensity normalisation shared by every model (the metadata's ``normalization`` entry).

nnU-Net's CT scheme: per channel, clip the HU values to ``clip_hu`` = [lo, hi] (the 0.5 and 99.5
percentiles of the foreground voxels of the training set), then subtract ``mean`` and divide by
``std`` (of the clipped foreground voxels). The parameters are computed once by the training
command (:func:`compute_ct_normalization`) and stored in each model file, so that inference
normalises exactly as training did.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch


def _check_params(channel_params: Sequence[Mapping[str, Any]], n_channels: int) -> list[tuple[float, float, float, float]]:
    if not isinstance(channel_params, (list, tuple)) or len(channel_params) != n_channels:
        got = len(channel_params) if isinstance(channel_params, (list, tuple)) else type(channel_params).__name__
        raise ValueError(f"normalization: expected one entry per channel ({n_channels}), got {got}")
    out = []
    for i, p in enumerate(channel_params):
        try:
            lo, hi = (float(v) for v in p["clip_hu"])
            mean, std = float(p["mean"]), float(p["std"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"normalization[{i}] must have clip_hu [lo, hi], mean and std, got {p!r}") from None
        if not hi > lo or not std > 0:
            raise ValueError(f"normalization[{i}]: need clip_hu lo < hi and std > 0, got {p!r}")
        out.append((lo, hi, mean, std))
    return out


def normalize_ct(data: np.ndarray | torch.Tensor, channel_params: Sequence[Mapping[str, Any]]
                 ) -> np.ndarray | torch.Tensor:
    """Normalise HU values ``[C, ...]`` (numpy array or tensor; a batch ``[B, C, ...]`` tensor is
    accepted too) channel by channel; returns float32 of the same kind."""
    is_tensor = isinstance(data, torch.Tensor)
    channel_axis = 1 if (is_tensor and data.ndim == 5) else 0
    n_channels = data.shape[channel_axis]
    params = _check_params(channel_params, n_channels)
    if is_tensor:
        out = data.to(torch.float32).clone()
        for c, (lo, hi, mean, std) in enumerate(params):
            view = out.select(channel_axis, c)
            view.clamp_(lo, hi).sub_(mean).div_(std)
        return out
    out_np = np.array(data, dtype=np.float32, copy=True)
    for c, (lo, hi, mean, std) in enumerate(params):
        view = out_np[c]
        np.clip(view, lo, hi, out=view)
        view -= mean
        view /= std
    return out_np


def compute_ct_normalization(samples: Iterable[np.ndarray], channel_names: Sequence[str],
                             percentiles: tuple[float, float] = (0.5, 99.5)) -> list[dict[str, Any]]:
    """nnU-Net's CT normalisation parameters from foreground HU samples.

    ``samples`` yields arrays ``[C, N]`` of foreground voxel values (one per case, e.g. a random
    subset); returns ``[{channel, clip_hu, mean, std}, ...]`` per channel.
    """
    parts = [np.asarray(s, dtype=np.float32) for s in samples]
    if not parts:
        raise ValueError("normalization: no foreground voxels to compute the intensity statistics from")
    values = np.concatenate(parts, axis=1)
    if values.shape[0] != len(channel_names) or values.shape[1] == 0:
        raise ValueError(f"normalization: expected [{len(channel_names)}, N>0] samples, got {values.shape}")
    params = []
    for c, name in enumerate(channel_names):
        lo, hi = np.percentile(values[c], percentiles)
        clipped = np.clip(values[c], lo, hi)
        std = float(clipped.std())
        params.append({"channel": name, "clip_hu": [float(lo), float(hi)],
                       "mean": float(clipped.mean()), "std": max(std, 1e-3)})
    return params
