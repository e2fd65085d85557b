"""Start-up checks, run before the graph does any work.

1. **Settings**: app.yaml is found and validated through :func:`lnmet.config.load_settings`; a bad
   setting stops the app with an error naming it. Which file: ``$PDAC_LN_CONFIG``, else the
   packager's config location ``$HOLOSCAN_CONFIG_PATH`` (inside a MAP, when that file exists), else
   ``app.yaml`` at the application root (the project root, or the staged application folder). The
   chosen path is exported as ``$PDAC_LN_CONFIG`` so that every operator reads the same file.
2. **Models**: the models folder (``-m`` / ``$HOLOSCAN_MODEL_PATH``) is checked against
   ``model_manifest.json`` (``$PDAC_LN_MODEL_MANIFEST``, else at the application root) by
   :func:`lnmet.model_manifest.verify_models`: a missing, extra or corrupted model stops the app.
3. **Input/output**: the input is a readable folder that holds files (a file is refused); the output
   folder exists or can be made, and a file can be written in it. The application checks the paths
   once more before the SDK parses the command line, so that every path problem exits 3. With
   app.yaml ``organ_source: nifti`` the TotalSegmentator output exists and holds NIfTI files it can
   use (:func:`lnmet.organ_sources.locate_nifti`).
4. **Device**: CUDA when ``torch.cuda.is_available()``, else CPU (``$PDAC_LN_DEVICE`` forces one).

Every failure raises :class:`StartupError` with a one-line message.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lnmet import config as lnconfig
from lnmet.config import Settings, SettingsError
from lnmet.model_manifest import MANIFEST_NAME, ModelIntegrityError, verify_models
from lnmet.types import ModelInfo

logger = logging.getLogger(__name__)

APP_ROOT = Path(__file__).resolve().parent.parent
"""The application root: the project root, or the staged application folder inside a MAP."""

MANIFEST_ENV = "PDAC_LN_MODEL_MANIFEST"
DEVICE_ENV = "PDAC_LN_DEVICE"
HOLOSCAN_CONFIG_ENV = "HOLOSCAN_CONFIG_PATH"


class StartupError(RuntimeError):
    """A start-up check failed; the message says what and where."""


@dataclass
class StartupState:
    """Everything the graph needs that the start-up checks established."""

    settings: Settings
    config_path: Path
    input_path: Path
    output_path: Path
    models_dir: Path
    manifest_path: Path
    models: dict[str, ModelInfo]
    device: str
    notes: list[str] = field(default_factory=list)


def find_config(root: Path = APP_ROOT) -> Path:
    """The app.yaml in use (see the module docstring for the order)."""
    explicit = os.environ.get(lnconfig.CONFIG_ENV)
    if explicit:
        return Path(explicit)
    packaged = os.environ.get(HOLOSCAN_CONFIG_ENV)
    if packaged and Path(packaged).is_file():
        return Path(packaged)
    return root / "app.yaml"


def load_checked_settings(root: Path = APP_ROOT) -> tuple[Settings, Path]:
    """Load and validate app.yaml; export its path for the operators. Raises StartupError."""
    path = find_config(root)
    try:
        settings = lnconfig.load_settings(path)
    except SettingsError as exc:
        raise StartupError(f"bad configuration: {exc}") from None
    os.environ[lnconfig.CONFIG_ENV] = str(path.resolve())
    return settings, path


def find_manifest(root: Path = APP_ROOT) -> Path:
    """model_manifest.json: ``$PDAC_LN_MODEL_MANIFEST``, else at the application root."""
    return Path(os.environ.get(MANIFEST_ENV) or root / MANIFEST_NAME)


def check_models(models_dir: Path, manifest_path: Path, required: Iterable[str] = ()) -> dict[str, ModelInfo]:
    """Verify every model against the manifest. Raises StartupError."""
    from lnmet.model_io import ModelFileError, validate_metadata

    try:
        infos = verify_models(models_dir, manifest_path, tuple(required))
        for info in infos.values():
            validate_metadata(info.metadata, source=info.file)
    except (ModelIntegrityError, ModelFileError) as exc:
        raise StartupError(f"model check failed: {exc}") from None
    for info in infos.values():
        synthetic = " (trained on synthetic data)" if info.metadata.get("synthetic_training_data") else ""
        logger.info("model %s %s verified (sha256 %s...)%s", info.name, info.version, info.sha256[:12], synthetic)
    return infos


def check_input(path: Path) -> None:
    """The input is a readable folder holding at least one file. Raises StartupError."""
    if not path.exists():
        raise StartupError(f"input not found: {path}")
    if path.is_file():
        raise StartupError(f"input is a file, not a folder: {path}; give the folder that holds the study's DICOM "
                           "files")
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise StartupError(f"input folder is not readable: {path}")
    try:
        has_file = any(p.is_file() for p in path.rglob("*"))
    except OSError as exc:
        raise StartupError(f"input folder cannot be read: {path}: {exc}") from None
    if not has_file:
        raise StartupError(f"input folder holds no files: {path}")


def check_output(path: Path) -> None:
    """The output folder exists or can be made, and a file can be written in it (tried: permission
    bits do not tell for root, read-only mounts or full disks). Raises StartupError; a folder made
    here is left for the run (the application removes it again if the run fails)."""
    if path.exists() and not path.is_dir():
        raise StartupError(f"output path is not a folder: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lnmet-write-check-"):
            pass
    except OSError as exc:
        raise StartupError(f"output folder cannot be written: {path} ({exc.strerror or exc})") from None


def check_organ_source(settings: Settings) -> None:
    """``organ_source: nifti``: the TotalSegmentator output is there and usable. Raises StartupError."""
    if settings.organ_source != "nifti":
        return
    from lnmet.organ_sources import OrganSourceError, locate_nifti

    try:
        found = locate_nifti(settings.organ_nifti_path or "")
    except OrganSourceError as exc:
        raise StartupError(f"organ source: {exc}") from None
    logger.info("organ source: TotalSegmentator output %s (%s)", found.path,
                "multi-label file" if found.multilabel else f"{len(found.structure_files)} structure file(s)")


def select_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'; ``$PDAC_LN_DEVICE`` forces one."""
    import torch

    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if forced:
        if forced not in ("cpu", "cuda"):
            raise StartupError(f"{DEVICE_ENV} must be 'cpu' or 'cuda', got {forced!r}")
        if forced == "cuda" and not torch.cuda.is_available():
            raise StartupError(f"{DEVICE_ENV}=cuda but no CUDA device is available")
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_device(device: str) -> str:
    """A log-friendly description of the device."""
    import torch

    if device == "cuda":
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def run_startup_checks(input_path: str | os.PathLike, output_path: str | os.PathLike,
                       models_dir: str | os.PathLike, required_models: Iterable[str] = (),
                       root: Path = APP_ROOT) -> StartupState:
    """All start-up checks, in order: settings, models, input/output, device."""
    logger.info("application root: %s", root)
    settings, config_path = load_checked_settings(root)
    logger.info("settings: %s (%s %s)", config_path, settings.app_title, settings.app_version)

    manifest_path = find_manifest(root)
    models = check_models(Path(models_dir), manifest_path, required_models)

    check_input(Path(input_path))
    check_output(Path(output_path))
    check_organ_source(settings)

    device = select_device()
    logger.info("device: %s", describe_device(device))
    return StartupState(settings=settings, config_path=config_path, input_path=Path(input_path),
                        output_path=Path(output_path), models_dir=Path(models_dir),
                        manifest_path=manifest_path, models=models, device=device)
