"""Stand-in model files for the application tests (never committed to models/).

Small TorchScript files with complete metadata, written with :func:`lnmet.model_io.save_model`,
and a manifest made from them, so that start-up checks, failure paths and packaging can be tested
before (and independently of) the bundled models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lnmet.model_io import save_model
from lnmet.model_manifest import build_manifest, write_manifest

DEFAULT_NAMES = ("standin_a", "standin_b")


def standin_metadata(name: str) -> dict:
    return {
        "name": name, "version": "0.0.1", "architecture": "Conv3d 1x1 stand-in",
        "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [16, 16, 16], "in_channels": 1,
        "channel_names": ["venous"], "normalization": [{"clip_hu": [-100, 240], "mean": 0.0, "std": 1.0}],
        "classes": ["background", "foreground"], "num_classes": 2,
        "trained_on": "nothing: test stand-in", "training_command": "none",
        "synthetic_training_data": True,
    }


def make_standin_models(root: Path, names: tuple[str, ...] | list[str] = DEFAULT_NAMES) -> tuple[Path, Path]:
    """Write ``root/models/<name>/model.ts`` for each name and ``root/model_manifest.json``."""
    models = root / "models"
    torch.manual_seed(0)
    for name in names:
        save_model(torch.nn.Conv3d(1, 2, 1), models / name / "model.ts", standin_metadata(name),
                   (torch.zeros(1, 1, 4, 4, 4),))
    models.mkdir(parents=True, exist_ok=True)
    manifest = root / "model_manifest.json"
    write_manifest(build_manifest(models), manifest)
    return models, manifest
