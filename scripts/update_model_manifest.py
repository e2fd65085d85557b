#!/usr/bin/env python
"""Regenerate ``model_manifest.json`` from the bundled models (``models/<name>/<file>``).

Reads each model file's ``metadata.json`` (name, version, trained_on) and its SHA-256, and writes
the manifest the application checks at start. Held-out figures already in the manifest are kept for
a model whose file is unchanged and dropped (with a line saying so) for one that changed: measure it
again with ``scripts/record_held_out.py``. Run it after training or replacing a model:

    python scripts/update_model_manifest.py                 # models/ -> model_manifest.json
    python scripts/update_model_manifest.py --check         # exit 1 if the manifest is out of date
    python scripts/update_model_manifest.py -m DIR -o FILE  # other folders
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.model_manifest import (  # noqa: E402
    MANIFEST_NAME,
    ModelIntegrityError,
    build_manifest,
    load_manifest,
    verify_models,
    write_manifest,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--models", type=Path, default=ROOT / "models", help="models folder (named-model layout)")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / MANIFEST_NAME, help="manifest file to write")
    parser.add_argument("--check", action="store_true", help="only verify the models against the existing manifest")
    args = parser.parse_args(argv)
    try:
        if args.check:
            infos = verify_models(args.models, args.output)
            for info in infos.values():
                print(f"ok  {info.name} {info.version} {info.sha256[:12]}")
            return 0
        previous = load_manifest(args.output) if args.output.is_file() else {}
        manifest = build_manifest(args.models, previous)
    except ModelIntegrityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_manifest(manifest, args.output)
    kept = {e["name"] for e in manifest["models"] if "held_out" in e}
    for name, entry in previous.items():
        if "held_out" in entry and name not in kept:
            print(f"{name}: held-out figures dropped (measured on another file); run scripts/record_held_out.py")
    for entry in manifest["models"]:
        print(f"{entry['name']:<24} {entry['version']:<10} {entry['sha256'][:12]}  {entry['trained_on']}")
    print(f"wrote {args.output} ({len(manifest['models'])} model(s))")
    if not manifest["models"]:
        print(json.dumps({"warning": f"no models found in {args.models}"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
