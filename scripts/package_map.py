#!/usr/bin/env python
"""Build the MONAI Application Package (MAP) with the real packager, ``monai-deploy package``.

Steps:

1. Check what goes in: app.yaml is validated (:func:`lnmet.config.load_settings`) and every model
   is verified against the manifest (:func:`lnmet.model_manifest.verify_models`).
2. Stage the application into ``build/map_stage/app/``. The packager copies only the application
   folder (to ``/opt/holoscan/app``) and takes ``requirements.txt`` from it; its ``--add`` copies
   the *contents* of a folder into ``/opt/holoscan/lib`` (flattening the package, so ``import
   lnmet`` would break). So the stage holds the whole import tree side by side::

       build/map_stage/app/__main__.py          (app/__main__.py: puts this folder on sys.path)
                          app/ operators/ lnmet/  (the packages, without caches)
                          requirements.txt app.yaml model_manifest.json

3. Run the packager in this process (``holoscan_cli`` main, as ``monai-deploy package``)::

       monai-deploy package build/map_stage/app -c app.yaml -t pdac-ln-met:<version> -m models \\
           --platform x86_64 --source ../shared/holoscan-cli/artifacts-4.2.0.json --output build/map

   The packager writes its Dockerfile and build context into a temporary folder that it deletes
   when it ends; this script keeps a copy in ``build/map/context/`` just before the image build.
   With ``--context-only`` it stops there (exit 0). Otherwise it goes on to ``docker buildx``; on
   machines without a Docker engine that fails, and the script says so and keeps the context
   (exit 1).

Build and run where Docker (with buildx) and NVIDIA's registry are: ``python scripts/package_map.py``,
then ``monai-deploy run <tag printed> -i INPUT -o OUTPUT``. Where neither is (as on this project's
machines), ``scripts/build_map_image.sh`` builds the image offline from this script's context, with
a locally made base image (``--base-image``, passed through to the packager).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnmet.config import SettingsError, load_settings  # noqa: E402
from lnmet.model_manifest import MANIFEST_NAME, ModelIntegrityError, verify_models  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "holoscan-cli" / "artifacts-4.2.0.json"
PACKAGES = ("app", "operators", "lnmet")  # the import tree the application needs
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


class PackagingError(RuntimeError):
    """Something the MAP needs is missing or invalid; the message says what."""


@dataclass
class PackagerRun:
    """What the packager did: the context kept, the image tag, whether the image was built."""

    context: Path | None = None
    tags: list[str] = field(default_factory=list)
    built: bool = False
    exit_code: int = 0
    build_args: dict[str, str] = field(default_factory=dict)  # what the packager passes to `docker buildx`


def stage_application(stage_dir: Path, config: Path, manifest: Path, requirements: Path) -> Path:
    """Copy the application into ``stage_dir/app`` (fresh); returns that folder."""
    app_dir = stage_dir / "app"
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    app_dir.mkdir(parents=True)
    shutil.copy2(ROOT / "app" / "__main__.py", app_dir / "__main__.py")
    for pkg in PACKAGES:
        src = ROOT / pkg
        if not (src / "__init__.py").is_file() and pkg != "operators":
            raise PackagingError(f"package folder {src} is missing or has no __init__.py")
        shutil.copytree(src, app_dir / pkg, ignore=IGNORE)
    if not (app_dir / "operators" / "__init__.py").exists():
        (app_dir / "operators" / "__init__.py").write_text('"""Operators of the graph."""\n')
    shutil.copy2(requirements, app_dir / "requirements.txt")
    shutil.copy2(config, app_dir / "app.yaml")
    shutil.copy2(manifest, app_dir / MANIFEST_NAME)
    return app_dir


def docker_engine_available() -> bool:
    """True when a Docker engine answers and buildx is installed."""
    if shutil.which("docker") is None:
        return False
    for cmd in (["docker", "info", "--format", "{{.ServerVersion}}"], ["docker", "buildx", "version"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode != 0 or not done.stdout.strip():
            return False
    return True


def run_packager(cli_args: list[str], context_dest: Path, context_only: bool) -> PackagerRun:
    """Run ``monai-deploy package`` in this process, keeping a copy of its build context."""
    from holoscan_cli.__main__ import main as holoscan_cli_main
    from holoscan_cli.packager import container_builder
    from holoscan_cli.packager.parameters import PlatformBuildResults

    run = PackagerRun()
    original = container_builder.BuilderBase._build_internal

    def keep_context(self: Any, dockerfile: str, platform_parameters: Any) -> Any:
        # Called after the Dockerfile is written and before `docker buildx`.
        if context_dest.exists():
            shutil.rmtree(context_dest)
        shutil.copytree(self._temp_dir, context_dest)
        run.context = context_dest
        run.tags.append(platform_parameters.tag)
        params = self._build_parameters
        run.build_args = {"UID": str(params.uid), "GID": str(params.gid), "UNAME": str(params.username),
                          "GPU_TYPE": str(platform_parameters.platform_config.value)}
        if context_only:
            result = PlatformBuildResults(platform_parameters)
            result.succeeded = False
            result.error = f"image not built (--context-only); build context kept in {context_dest}"
            return result
        result = original(self, dockerfile, platform_parameters)
        run.built = bool(result.succeeded)
        return result

    container_builder.BuilderBase._build_internal = keep_context
    try:
        holoscan_cli_main(["monai-deploy", "package", *cli_args])
    except SystemExit as exc:
        run.exit_code = exc.code if isinstance(exc.code, int) else 1
    finally:
        container_builder.BuilderBase._build_internal = original
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", type=Path, default=ROOT / "app.yaml", help="application config (app.yaml)")
    parser.add_argument("-m", "--models", type=Path, default=ROOT / "models", help="models folder (named-model layout)")
    parser.add_argument("--manifest", type=Path, default=ROOT / MANIFEST_NAME, help="model manifest")
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("-t", "--tag", help="image name[:tag] (default pdac-ln-met:<application.version>)")
    parser.add_argument("--platform", default="x86_64", help="packager --platform (default x86_64)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE if DEFAULT_SOURCE.is_file() else None,
                        help="packager artifact manifest (default: ../shared/holoscan-cli/artifacts-4.2.0.json)")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "map_stage", help="staging folder")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "build" / "map",
                        help="output folder: image tarball (when built) and context/")
    parser.add_argument("--context-only", action="store_true",
                        help="stop after the packager wrote the Dockerfile and build context (no Docker needed)")
    parser.add_argument("--base-image", help="packager --base-image (default: the manifest's CUDA runtime image)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return package(build_parser().parse_args(argv))[0]


def package(args: argparse.Namespace) -> tuple[int, PackagerRun | None]:
    """Check, stage and run the packager as the command-line arguments say: (exit code, packager run)."""
    try:
        settings = load_settings(args.config)
        models = verify_models(args.models, args.manifest)
    except (SettingsError, ModelIntegrityError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 3, None
    if not args.requirements.is_file():
        print(f"ERROR: requirements file not found: {args.requirements}", file=sys.stderr)
        return 3, None
    tag = args.tag or f"pdac-ln-met:{settings.app_version}"

    try:
        app_dir = stage_application(args.stage, args.config, args.manifest, args.requirements)
    except PackagingError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 3, None
    print(f"[package] staged application in {app_dir} ({len(models)} model(s) verified)")

    args.output.mkdir(parents=True, exist_ok=True)
    cli_args = [str(app_dir), "-c", str(app_dir / "app.yaml"), "-t", tag, "--platform", args.platform,
                "--sdk", "monai-deploy",
                "--output", str(args.output)]
    if models:
        cli_args += ["-m", str(args.models)]
    if args.source is not None:
        cli_args += ["--source", str(args.source)]
    if args.base_image:
        cli_args += ["--base-image", args.base_image]
    if not args.context_only and not docker_engine_available():
        print("[package] no Docker engine with buildx here: the packager will write the build context and "
              "then fail at `docker buildx` (use --context-only to stop before it)")
    print(f"[package] monai-deploy package {' '.join(cli_args)}")
    run = run_packager(cli_args, args.output / "context", args.context_only)

    if run.context is None:
        print("ERROR: the packager stopped before writing its build context (see its messages above)",
              file=sys.stderr)
        return 1, run
    tags = ", ".join(run.tags)
    if run.built:
        print(f"[package] image built: {tags}\n[package] run it with: monai-deploy run {run.tags[0]} -i INPUT -o OUTPUT")
        return 0, run
    print(f"[package] Dockerfile and build context kept in {run.context}")
    if args.context_only:
        print(f"[package] image not built (--context-only); it would be tagged {tags}")
        return 0, run
    print(f"ERROR: the image was not built (no Docker engine/buildx here?); build context kept in {run.context}",
          file=sys.stderr)
    return 1, run


if __name__ == "__main__":
    sys.exit(main())
