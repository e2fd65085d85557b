"""Model files: TorchScript with a ``metadata.json`` extra file.

Every bundled model (``models/<name>/model.ts``) is one TorchScript file carrying what the app needs
to use it: spacing, patch size, intensity normalisation, channels, classes, version, and what it
was trained on (models trained on the synthetic studies say so). :func:`save_model` traces a module
in eval mode and writes the file atomically; :func:`load_model` reads it back and validates the
metadata, raising :class:`ModelFileError` naming the file when anything is missing or corrupted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
REQUIRED_KEYS: tuple[str, ...] = (
    "name", "version", "architecture", "spacing_mm", "patch_size", "in_channels", "channel_names",
    "normalization", "classes", "num_classes", "trained_on", "training_command",
    "synthetic_training_data", "created",
)


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or its metadata is incomplete; the message names it."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (as listed in the model manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_metadata(metadata: Any, source: str = "metadata") -> dict[str, Any]:
    """Check the required keys and their basic types; returns the metadata."""
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelFileError(f"{source}: metadata lacks the required key(s) {', '.join(missing)}")

    def _numbers(key: str, integer: bool) -> None:
        v = metadata[key]
        ok = isinstance(v, (list, tuple)) and len(v) in (2, 3) and all(
            isinstance(x, int if integer else (int, float)) and not isinstance(x, bool) and x > 0 for x in v)
        if not ok:
            kind = "positive integers" if integer else "positive numbers"
            raise ModelFileError(f"{source}: metadata '{key}' must be a list of 2 or 3 {kind} [x, y(, z)], got {v!r}")

    _numbers("spacing_mm", False)
    _numbers("patch_size", True)
    if not isinstance(metadata["in_channels"], int) or metadata["in_channels"] < 1:
        raise ModelFileError(f"{source}: metadata 'in_channels' must be a positive integer")
    if not isinstance(metadata["channel_names"], list) or len(metadata["channel_names"]) != metadata["in_channels"]:
        raise ModelFileError(f"{source}: metadata 'channel_names' must list in_channels ({metadata['in_channels']}) names")
    if not isinstance(metadata["num_classes"], int) or metadata["num_classes"] < 1:
        raise ModelFileError(f"{source}: metadata 'num_classes' must be a positive integer")
    if not isinstance(metadata["synthetic_training_data"], bool):
        raise ModelFileError(f"{source}: metadata 'synthetic_training_data' must be true or false")
    if not isinstance(metadata["normalization"], (list, dict)):
        raise ModelFileError(f"{source}: metadata 'normalization' must be a list (per channel) or an object")
    return metadata


def save_model(module: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, Any],
               example_inputs: tuple[torch.Tensor, ...]) -> str:
    """Trace ``module`` in eval mode with ``example_inputs`` and write it with its metadata to
    ``path`` (atomically). ``created`` is filled in when absent. Returns the file's SHA-256."""
    path = Path(path)
    meta = dict(metadata)
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    validate_metadata(meta, source=str(path))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks inside MONAI/torch layers are constant for a given network: expected
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, tuple(example_inputs), check_trace=False)
    finally:
        module.train(was_training)
    return write_scripted(traced, path, meta)


def write_scripted(module: torch.jit.ScriptModule, path: str | os.PathLike, metadata: dict[str, Any]) -> str:
    """Write a TorchScript module with its metadata to ``path`` atomically; returns the SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".ts", dir=path.parent)
    os.close(fd)
    try:
        torch.jit.save(module, tmp, _extra_files={METADATA_FILE: json.dumps(metadata, indent=1, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_file(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of a model file, without keeping the module."""
    return load_model(path)[1]


_KEPT: dict[tuple[str, int, int, str], tuple[torch.jit.ScriptModule, dict[str, Any]]] | None = None


def keep_models_loaded(enabled: bool = True) -> None:
    """Keep every model that :func:`load_model` loads in memory for the rest of the process, so that
    loading the same unchanged file again (same path, size and modification time, same device)
    returns the loaded module. For long-lived workers that run the app on one study after another
    (``cohort``); off by default. The modules are used read-only (inference)."""
    global _KEPT
    _KEPT = {} if enabled else None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", optimize: bool = False
               ) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a model file; returns the TorchScript module (eval mode, on ``device``) and its
    validated metadata (from memory when :func:`keep_models_loaded` is on and the file is unchanged).
    ``optimize``: on a CPU, the module frozen and optimised for inference (:func:`optimized_for_cpu`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if _KEPT is None:
        return _load_model_file(path, device, optimize)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(device), optimize)
    if key not in _KEPT:
        _KEPT[key] = _load_model_file(path, device, optimize)
    module, metadata = _KEPT[key]
    return module, json.loads(json.dumps(metadata))  # callers may change their metadata copy


def optimized_for_cpu(module: torch.jit.ScriptModule, source: str = "") -> torch.jit.ScriptModule:
    """``module`` frozen (weights as constants) and optimised for inference on a CPU: PyTorch folds
    the normalisation layers into the convolutions and runs them through oneDNN. The organ model's
    48x80x80 window took 0.19 s instead of 0.54 s on one thread of this project's CPU, logits within
    1e-4 of the plain module's (benchmarks/bench_segmentation.py). A module PyTorch cannot freeze
    is returned as it is. (``optimize_for_inference`` warns that it is deprecated in favour of
    ``torch.compile``, which would need a compiler at run time and minutes of compiling; it is
    what the pinned PyTorch offers for TorchScript, so the warning is silenced here.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))
    except Exception as exc:  # an operator without a frozen/oneDNN form: plain module, same results
        log.debug("%s: not optimised for CPU inference (%s: %s)", source or "model", type(exc).__name__, exc)
        return module


def _load_model_file(path: Path, device: str | torch.device, optimize: bool = False
                     ) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError for corrupted archives
        raise ModelFileError(f"{path}: not a readable TorchScript model file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    raw = extra[METADATA_FILE]
    if not raw:
        raise ModelFileError(f"{path}: the model file has no {METADATA_FILE}")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: {METADATA_FILE} is not valid JSON ({exc})") from None
    validate_metadata(metadata, source=str(path))
    module.eval()
    if optimize and torch.device(device).type == "cpu":
        module = optimized_for_cpu(module, str(path))
    return module, metadata


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LoadedModel:
    """A model file loaded for inference: the TorchScript module (eval mode), its metadata, the
    device and the file's path. Subclasses check their own metadata in :meth:`_check`."""

    def __init__(self, module: torch.jit.ScriptModule, metadata: dict[str, Any], device: torch.device,
                 path: str = ""):
        self.module = module
        self.metadata = metadata
        self.device = device
        self.path = path
        self._check()

    def _check(self) -> None:
        """Raise ValueError when the metadata does not fit this kind of model."""

    optimize_for_cpu = False  # subclasses whose heavy inference gains from optimized_for_cpu

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None):
        dev = select_device(device)
        module, metadata = load_model(path, device=dev, optimize=cls.optimize_for_cpu)
        return cls(module, metadata, dev, str(path))

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.metadata["channel_names"])

    def _size_zyx(self) -> tuple[int, int, int]:
        """The metadata's ``patch_size`` (x, y, z) as (z, y, x)."""
        x, y, z = self.metadata["patch_size"]
        return (int(z), int(y), int(x))
