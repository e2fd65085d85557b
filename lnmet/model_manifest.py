"""The model manifest (``model_manifest.json``) and the integrity check of ``models/``.

``models/`` follows MONAI Deploy's named-model layout: one sub-folder per model, named after it,
holding exactly one file (a TorchScript file with a ``metadata.json`` extra file). The manifest,
kept outside ``models/`` (at the project root, or beside the application when packaged), lists for
each model its name, version, file (relative to ``models/``), SHA-256, what it was trained on and,
once measured, its held-out figures (``held_out``, :mod:`lnmet.held_out`; valid only for the file
whose SHA-256 they name).

:func:`verify_models` checks a models folder against the manifest before the application does any
work: a missing, extra, renamed or corrupted (checksum mismatch) model raises
:class:`ModelIntegrityError` naming the model and the file. :func:`build_manifest` makes the
manifest from a models folder (``scripts/update_model_manifest.py``), keeping the held-out figures
of every model whose file is unchanged.

Pure functions, no Holoscan and no torch: the metadata is read from the TorchScript zip directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from lnmet.held_out import HeldOutError, HeldOutEvidence
from lnmet.types import ModelInfo

MANIFEST_NAME = "model_manifest.json"
MANIFEST_FORMAT = 1
METADATA_ENTRY = "metadata.json"  # the TorchScript extra file with the model's metadata


class ModelIntegrityError(RuntimeError):
    """The models folder does not match the manifest, or the manifest itself is unusable."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata.json`` extra file of a TorchScript model, read from its zip archive.

    Raises ModelIntegrityError if the file is not a TorchScript zip or carries no metadata.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            entries = [n for n in zf.namelist() if n.split("/", 1)[-1] == f"extra/{METADATA_ENTRY}"]
            if not entries:
                raise ModelIntegrityError(f"{p}: TorchScript file has no '{METADATA_ENTRY}' extra file")
            raw = zf.read(entries[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelIntegrityError(f"{p}: not a readable TorchScript (zip) file: {exc}") from None
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ModelIntegrityError(f"{p}: '{METADATA_ENTRY}' is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelIntegrityError(f"{p}: '{METADATA_ENTRY}' must be a JSON object")
    return meta


def scan_models_dir(models_dir: str | os.PathLike) -> dict[str, Path]:
    """Map model name -> its single file, checking the named-model layout.

    Raises ModelIntegrityError when the folder is missing, holds a loose file, or a model folder
    does not hold exactly one file.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelIntegrityError(f"models folder not found: {root}")
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            raise ModelIntegrityError(
                f"{entry}: hidden entry in the models folder; named-model layout expects only models/<name>/<file>"
            )
        if not entry.is_dir():
            raise ModelIntegrityError(
                f"{entry}: loose file in the models folder; named-model layout expects models/<name>/<file>"
            )
        files = sorted(entry.iterdir())
        if len(files) != 1 or not files[0].is_file():
            names = ", ".join(f.name for f in files) or "nothing"
            raise ModelIntegrityError(
                f"{entry}: a model folder must hold exactly one model file, found {len(files)} ({names})"
            )
        found[entry.name] = files[0]
    return found


def build_manifest(models_dir: str | os.PathLike, previous: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest document for a models folder: each model's name, version, file, sha256, trained_on.

    Name, version and trained_on come from each file's metadata; the metadata name must match the
    folder name. ``previous`` (:func:`load_manifest` of the manifest being replaced): a model whose
    file has the SHA-256 its held-out figures were measured on keeps them; a changed file loses them.
    """
    previous = previous or {}
    entries = []
    for name, path in scan_models_dir(models_dir).items():
        meta = read_model_metadata(path)
        meta_name = meta.get("name")
        if meta_name != name:
            raise ModelIntegrityError(f"{path}: metadata name {meta_name!r} does not match its folder {name!r}")
        for key in ("version", "trained_on"):
            if not meta.get(key):
                raise ModelIntegrityError(f"{path}: metadata has no '{key}'")
        entries.append({
            "name": name,
            "version": str(meta["version"]),
            "file": f"{name}/{path.name}",
            "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size,
            "trained_on": str(meta["trained_on"]),
            "synthetic_training_data": bool(meta.get("synthetic_training_data", False)),
        })
        held_out = previous.get(name, {}).get("held_out")
        if isinstance(held_out, dict) and held_out.get("sha256") == entries[-1]["sha256"]:
            entries[-1]["held_out"] = held_out
    return {"format": MANIFEST_FORMAT, "models": entries}


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the manifest as stable, diff-friendly JSON."""
    Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def load_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and validate the manifest; return name -> entry."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelIntegrityError(f"model manifest not found: {p}") from None
    except ValueError as exc:
        raise ModelIntegrityError(f"{p}: model manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ModelIntegrityError(f"{p}: model manifest must be an object with a 'models' list")
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(doc["models"]):
        if not isinstance(entry, dict):
            raise ModelIntegrityError(f"{p}: models[{i}] must be an object")
        for key in ("name", "version", "file", "sha256", "trained_on"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ModelIntegrityError(f"{p}: models[{i}] has no '{key}' (a non-empty string is expected)")
        if entry["name"] in out:
            raise ModelIntegrityError(f"{p}: model '{entry['name']}' is listed twice")
        if "held_out" in entry:
            try:
                evidence = HeldOutEvidence.from_dict(entry["held_out"], f"{p}: model '{entry['name']}'")
            except HeldOutError as exc:
                raise ModelIntegrityError(str(exc)) from None
            if evidence.sha256 != entry["sha256"]:
                raise ModelIntegrityError(
                    f"{p}: model '{entry['name']}': its held-out figures were measured on file "
                    f"{evidence.sha256[:12]}..., the manifest lists {entry['sha256'][:12]}...; measure the model again "
                    "(scripts/record_held_out.py) or remove 'held_out'")
        out[entry["name"]] = entry
    return out


def verify_models(models_dir: str | os.PathLike, manifest_path: str | os.PathLike,
                  required: list[str] | tuple[str, ...] = ()) -> dict[str, ModelInfo]:
    """Check every model of ``models_dir`` against the manifest; return name -> ModelInfo.

    Fails (ModelIntegrityError, naming the model and file) on: a model listed but missing, a model
    present but not listed, a file name other than the listed one, a SHA-256 mismatch, a model
    whose metadata cannot be read, or a ``required`` model that the manifest does not list.
    """
    manifest = load_manifest(manifest_path)
    present = scan_models_dir(models_dir)
    root = Path(models_dir)

    missing_required = [n for n in required if n not in manifest]
    if missing_required:
        raise ModelIntegrityError(
            f"{manifest_path}: the application needs model(s) {', '.join(missing_required)}, not listed in the manifest"
        )
    missing = sorted(set(manifest) - set(present))
    if missing:
        raise ModelIntegrityError(
            f"model(s) listed in {Path(manifest_path).name} missing from {root}: {', '.join(missing)}"
        )
    extra = sorted(set(present) - set(manifest))
    if extra:
        raise ModelIntegrityError(
            f"model folder(s) in {root} not listed in {Path(manifest_path).name}: {', '.join(extra)}"
        )

    infos: dict[str, ModelInfo] = {}
    for name, entry in manifest.items():
        path = present[name]
        rel = f"{name}/{path.name}"
        if rel != entry["file"]:
            raise ModelIntegrityError(f"{root / name}: holds '{path.name}', the manifest lists '{entry['file']}'")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ModelIntegrityError(
                f"{path}: SHA-256 mismatch for model '{name}' (corrupted or replaced file): "
                f"manifest {entry['sha256'][:12]}..., file {digest[:12]}..."
            )
        meta = read_model_metadata(path)
        if str(meta.get("version")) != entry["version"]:
            raise ModelIntegrityError(
                f"{path}: metadata version {meta.get('version')!r} differs from the manifest's {entry['version']!r}"
            )
        held_out = HeldOutEvidence.from_dict(entry["held_out"], name) if "held_out" in entry else None
        infos[name] = ModelInfo(name=name, version=entry["version"], file=str(path), sha256=digest,
                                trained_on=entry["trained_on"], metadata=meta, held_out=held_out)
    return infos
