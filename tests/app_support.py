"""Helpers of the application tests: stand-in model files and running ``python app``.

Stand-in models are never committed to models/.

Small TorchScript files with complete metadata, written with :func:`lnmet.model_io.save_model`,
and a manifest made from them, so that start-up checks, failure paths and packaging can be tested
before (and independently of) the bundled models.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lnmet.model_io import save_model
from lnmet.model_manifest import build_manifest, write_manifest

DEFAULT_NAMES = ("standin_a", "standin_b")
TINY_FILTERS = (4, 8, 16, 32)
TINY_STRIDES = (1, 2, 2, (1, 2, 2))
TWO_PHASES = ["CT_arterial", "CT_venous"]


def standin_metadata(name: str) -> dict:
    return {
        "name": name, "version": "0.0.1", "architecture": {"type": "Conv3d 1x1 stand-in"},
        "spacing_mm": [3.0, 3.0, 3.0], "patch_size": [16, 16, 16], "in_channels": 1,
        "channel_names": ["CT_venous"], "normalization": [{"clip_hu": [-100, 240], "mean": 0.0, "std": 1.0}],
        "classes": {"background": 0, "foreground": 1}, "num_classes": 2,
        "trained_on": "nothing: untrained test stand-in", "training_command": "none",
        "synthetic_training_data": True,
    }


def _standin_segmentation(name: str, path: Path) -> None:
    """An untrained tiny SegmentationUNet with the metadata layout of the real model ``name``."""
    from lnmet.labels import ORGAN_CLASSES
    from lnmet.networks import SegmentationUNet

    classes = {"organ_seg": {"background": 0, **{c.key: c.label for c in ORGAN_CLASSES}},
               "ln_seg": {"background": 0, "lymph_node": 1},
               "pdac_seg": {"background": 0, "pdac": 1}}[name]
    attention = name == "ln_seg"
    net = SegmentationUNet(len(TWO_PHASES), len(classes), TINY_FILTERS, TINY_STRIDES, attention=attention)
    if name == "ln_seg":  # untrained weights would call hundreds of random blobs lymph nodes: keep a few
        with torch.no_grad():
            for head in net.heads:
                conv = next(m for m in head.modules() if isinstance(m, torch.nn.Conv3d))
                conv.bias[0] += 4.0
    meta = {**standin_metadata(name), "architecture": net.architecture(), "patch_size": [32, 32, 16],
            "in_channels": len(TWO_PHASES), "channel_names": TWO_PHASES,
            "normalization": [{"clip_hu": [-200, 300], "mean": 40.0, "std": 80.0}] * 2,
            "classes": classes, "num_classes": len(classes)}
    example = [torch.zeros(1, len(TWO_PHASES), 16, 32, 32)]
    if attention:
        example.append(torch.ones(1, 1, 16, 32, 32))
    save_model(net, path, meta, tuple(example))


def _standin_ln_classifier(name: str, path: Path) -> None:
    """An untrained LN identification model on a tiny attention-guided backbone."""
    from lnmet.networks.ln_classifier import LNClassifier

    seg = path.parent.parent.parent / f".{name}_backbone.ts"  # outside models/
    _standin_segmentation("ln_seg", seg)
    net, seg_meta = LNClassifier.from_segmentation_model(seg, pooling="average+node", descriptors=True)  # as bundled
    crop = (16, 16, 16)
    meta = {**seg_meta, "name": name, "architecture": net.architecture(crop), "patch_size": list(crop),
            "classes": {"negative": 0, "positive": 1}, "num_classes": 2, "decision_threshold": 0.5,
            "trained_on": "nothing: untrained test stand-in"}
    save_model(net.eval(), path, meta, (torch.zeros(1, len(TWO_PHASES), *crop), torch.ones(1, 1, *crop),
                                        torch.ones(1, 1, *crop)))
    seg.unlink()


def _standin_patient_classifier(name: str, path: Path) -> None:
    """An untrained tiny patient classifier (combined mode: tumour patches + LN volume)."""
    from lnmet.networks.patient_classifier import PatientClassifier

    net = PatientClassifier(1, (4, 8, 16, 32), mode="combined").eval()
    meta = {**standin_metadata(name), "mode": "combined", "architecture": net.architecture(),
            "spacing_mm": [3.0, 3.0], "patch_size": [32, 32], "in_channels": 1, "channel_names": ["CT_venous"],
            "normalization": [{"channel": "CT_venous", "clip_hu": [-200.0, 300.0], "mean": 60.0, "std": 80.0}],
            "classes": {"negative": 0, "positive": 1}, "num_classes": 2, "decision_threshold": 0.5,
            "nodes_only_threshold_mm3": 300.0}
    save_model(net, path, meta, (torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1)))


STANDIN_BUILDERS = {"organ_seg": _standin_segmentation, "ln_seg": _standin_segmentation,
                    "pdac_seg": _standin_segmentation, "ln_cls": _standin_ln_classifier,
                    "patient_cls": _standin_patient_classifier}


def make_standin_models(root: Path, names: tuple[str, ...] | list[str] = DEFAULT_NAMES) -> tuple[Path, Path]:
    """Write ``root/models/<name>/model.ts`` for each name and ``root/model_manifest.json``.

    Names of the application's models get an untrained tiny network of the real architecture (so
    the operators load them); other names a 1x1 convolution.
    """
    models = root / "models"
    torch.manual_seed(0)
    for name in names:
        path = models / name / "model.ts"
        if name in STANDIN_BUILDERS:
            STANDIN_BUILDERS[name](name, path)
        else:
            save_model(torch.nn.Conv3d(1, 2, 1), path, standin_metadata(name), (torch.zeros(1, 1, 4, 4, 4),))
    models.mkdir(parents=True, exist_ok=True)
    manifest = root / "model_manifest.json"
    write_manifest(build_manifest(models), manifest)
    return models, manifest


def _big_stack() -> None:  # Holoscan wants a 32 MB stack (as scripts/run_tests.sh sets)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def run_app(args: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python app ARGS`` from the project root in a subprocess (a real Holoscan run)."""
    root = Path(__file__).resolve().parent.parent
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    base.update(env or {})
    return subprocess.run([sys.executable, str(root / "app"), *args], capture_output=True, text=True,
                          timeout=timeout, env=base, cwd=cwd or root, preexec_fn=_big_stack)


def last_error_line(done: subprocess.CompletedProcess) -> str:
    """The last stderr line (the app's one-line ``ERROR: ...``)."""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else ""
