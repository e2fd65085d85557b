#!/usr/bin/env python
"""Build the MAP image on this machine, offline, with the SDK's own packager, and run it.

    bash scripts/build_map_image.sh                      # = python scripts/map_image.py build
    python scripts/map_image.py run -i DICOM -o OUTPUT   # `docker run` the image on a CPU host

How the image is made (every step cached under ``build/map_image/``):

1. **Base image** ``pdac-ln-met-base:bookworm-<recipe hash>``: Debian 12 "bookworm" minbase made with
   ``debootstrap`` (python3 3.11, python3-pip, jq for the packager's ``tools`` entry point), its apt
   caches removed, plus the CUDA 13 runtime library that Holoscan's modules link against (only
   libcudart.so.13, from NVIDIA's ``nvidia-cuda-runtime`` wheel), turned into an image with
   ``docker import``. The packager's default base (NVIDIA's
   CUDA runtime image on nvcr.io) cannot be pulled here, and the image needs no CUDA: torch is the
   CPU build. The root file system is kept as a tarball, so a lost image is re-imported in seconds.
2. **Wheelhouse**: ``pip wheel -r requirements.txt`` on the host, i.e. the pinned *runtime*
   dependencies and theirs (CPU torch from the host's package index; test tools are in
   requirements-dev.txt and stay out). Reused while requirements.txt and the Python version are
   the same.
3. **Packager**: ``scripts/package_map.py`` runs ``monai-deploy package`` (holoscan-cli 4.2.0) with
   ``--base-image`` set to the image of step 1 and keeps the Dockerfile and build context it writes
   (the MAP manifests app.json/pkg.json, the models, the staged application, its labels).
4. **Offline edits** of that Dockerfile (:func:`offline_dockerfile`, each listed in
   :data:`DOCKERFILE_EDITS` and written into the Dockerfile's header): the apt-get and curl steps
   (CUDA keyring, Ubuntu python3 packages) go, since the base already has what they install; every
   ``pip install`` installs from the wheelhouse, bind-mounted into the build, with ``--no-index``;
   the Ubuntu 24.04 paths of Python 3.12 become Debian's 3.11; ``PYTHONUSERBASE`` is set so that the
   packages installed for the image's user are found under any ``--user``. The packager's ``tools``
   entry point reports the application's exit status but then exits 0; it is made to exit with it.
5. **Build** with Debian's docker client and the daemon's BuildKit (``RUN --mount``), with
   ``--network=none`` (nothing in the build reaches a network) and the build arguments the packager
   would give ``docker buildx`` (user name, UID, GID, GPU type).

Run it (CPU host)::

    docker run --rm --network none --ulimit stack=33554432 --user "$(id -u):$(id -g)" \\
        -v /path/to/dicom:/var/holoscan/input:ro -v /path/to/output:/var/holoscan/output IMAGE

Needs root or passwordless sudo (debootstrap, apt, dockerd); a Docker engine is used if one answers,
else ``dockerd`` is started for the build and stopped after it (``--keep-engine`` leaves it running).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import package_map  # noqa: E402
from docker_engine import DockerUnavailable, Engine, root_prefix, docker_engine  # noqa: E402

CACHE = ROOT / "build" / "map_image"
BASE_SUITE = "bookworm"  # Debian 12: Python 3.11, as on the build hosts
BASE_PYTHON = "3.11"
BASE_PACKAGES = ("python3", "python3-pip", "jq")
# Holoscan's Python modules link against the CUDA 13 runtime library even on a CPU-only host (NVIDIA's
# base image has it; so do the build hosts, in /usr/local/cuda-13.0). The base gets that one library
# (0.7 MB) from NVIDIA's wheel, at the same place, with its licence; no other CUDA component.
CUDA_RUNTIME_WHEEL = "nvidia-cuda-runtime==13.0.96"
CUDA_RUNTIME_FILES = {"nvidia/cu13/lib/libcudart.so.13": "usr/local/cuda-13.0/lib/libcudart.so.13",
                      "nvidia_cuda_runtime-13.0.96.dist-info/licenses/License.txt": "usr/local/cuda-13.0/License.txt"}
BASE_REPOSITORY = "pdac-ln-met-base"
BASE_RECIPE_VERSION = 1  # bump when the base recipe changes in a way the hash does not see
WHEELHOUSE_DIR = "wheelhouse"  # folder name inside the build context (the packager's .dockerignore drops "wheels/")
WHEELHOUSE_MOUNT = "/tmp/wheelhouse"
STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants a 32 MB stack
CONTAINER_INPUT = "/var/holoscan/input"
CONTAINER_OUTPUT = "/var/holoscan/output"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message says which and why."""


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- 1. base image

def debian_mirror() -> str:
    """The Debian mirror the host's apt already uses (first ``.../debian`` URI), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        try:
            text = src.read_text()
        except OSError:
            continue
        for uri in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def base_image_tag() -> str:
    recipe = json.dumps([BASE_RECIPE_VERSION, BASE_SUITE, "minbase", BASE_PACKAGES, "no-apt-caches",
                         CUDA_RUNTIME_WHEEL, sorted(CUDA_RUNTIME_FILES.items())])
    return f"{BASE_REPOSITORY}:{BASE_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def _as_root(cmd: list[str]) -> list[str]:
    sudo = root_prefix()
    if sudo is None:
        raise ImageBuildError(f"{cmd[0]} needs root or passwordless sudo")
    return [*sudo, *cmd]


def make_base_rootfs(tarball: Path) -> None:
    """debootstrap the base root file system and keep it as ``tarball``."""
    if not Path("/usr/sbin/debootstrap").exists():
        raise ImageBuildError("debootstrap not installed (Debian package debootstrap)")
    work = tarball.parent / "rootfs.partial"
    subprocess.run(_as_root(["rm", "-rf", str(work)]), check=True)
    mirror = debian_mirror()
    log(f"[base] debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE} ({mirror})")
    done = subprocess.run(_as_root(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                    BASE_SUITE, str(work), mirror]), capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageBuildError(f"debootstrap failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    clean = "rm -rf {0}/var/cache/apt/archives/*.deb {0}/var/lib/apt/lists/* {0}/var/log/bootstrap.log"
    subprocess.run(_as_root(["sh", "-c", clean.format(work)]), check=True)
    add_cuda_runtime(work, tarball.parent)
    partial = tarball.with_suffix(".partial")
    with open(partial, "wb") as fh:
        subprocess.run(_as_root(["tar", "--numeric-owner", "-C", str(work), "-c", "."]), stdout=fh, check=True)
    partial.rename(tarball)
    subprocess.run(_as_root(["rm", "-rf", str(work)]), check=True)


def add_cuda_runtime(rootfs: Path, cache: Path) -> None:
    """Put libcudart.so.13 (:data:`CUDA_RUNTIME_WHEEL`) into the root file system, on the loader path."""
    import zipfile

    wheels = cache / "cuda-runtime"
    shutil.rmtree(wheels, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--no-deps", CUDA_RUNTIME_WHEEL, "-d", str(wheels)], capture_output=True, text=True)
    found = list(wheels.glob("*.whl"))
    if done.returncode != 0 or len(found) != 1:
        raise ImageBuildError(f"could not get {CUDA_RUNTIME_WHEEL}: {done.stderr.strip()[-1000:]}")
    extracted = wheels / "files"
    with zipfile.ZipFile(found[0]) as whl:
        for member, dest in CUDA_RUNTIME_FILES.items():
            whl.extract(member, extracted)
            subprocess.run(_as_root(["install", "-D", "-m", "0644", str(extracted / member), str(rootfs / dest)]),
                           check=True)
    conf = wheels / "cuda-13.0.conf"
    conf.write_text("/usr/local/cuda-13.0/lib\n")
    subprocess.run(_as_root(["install", "-D", "-m", "0644", str(conf), str(rootfs / "etc/ld.so.conf.d/cuda-13.0.conf")]),
                   check=True)
    subprocess.run(_as_root(["chroot", str(rootfs), "/sbin/ldconfig"]), check=True)
    shutil.rmtree(wheels)


def image_id(engine: Engine, ref: str) -> str | None:
    done = engine.run("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_base_image(engine: Engine, cache: Path) -> str:
    """The local base image (made or re-imported when missing); returns its tag."""
    tag = base_image_tag()
    if image_id(engine, tag):
        log(f"[base] {tag} present")
        return tag
    tarball = cache / f"base-{tag.split(':')[1]}.tar"
    if not tarball.is_file():
        make_base_rootfs(tarball)
    log(f"[base] docker import {tarball.name} -> {tag}")
    with open(tarball, "rb") as fh:
        engine.run("import", "-", tag, stdin=fh)
    for old in engine.run("images", BASE_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
        if old != tag:
            engine.run("rmi", old, check=False)
    for stale in cache.glob("base-*.tar"):
        if stale != tarball:
            stale.unlink()
    return tag


# --------------------------------------------------------------------------- 2. wheelhouse

def wheelhouse_key(requirements: Path) -> str:
    blob = requirements.read_bytes() + f"{sys.version_info[:2]} {os.uname().machine}".encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def ensure_wheelhouse(requirements: Path, cache: Path) -> Path:
    """Wheels of every runtime dependency, made on the host (``pip wheel``); reused while valid."""
    house = cache / f"wheelhouse-{wheelhouse_key(requirements)}"
    if (house / ".complete").is_file():
        log(f"[wheels] {house.name} present ({len(list(house.glob('*.whl')))} wheels)")
        return house
    partial = house.with_name(house.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"[wheels] pip wheel -r {requirements.name} -> {house.name}")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "-r", str(requirements), "-w", str(partial)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageBuildError(f"pip wheel failed: {done.stderr.strip()[-1500:]}")
    others = [p.name for p in partial.iterdir() if not p.name.endswith(".whl")]
    if others:
        raise ImageBuildError(f"the wheelhouse holds files that are not wheels: {others}")
    (partial / ".complete").write_text("\n".join(sorted(p.name for p in partial.glob("*.whl"))) + "\n")
    partial.rename(house)
    for stale in cache.glob("wheelhouse-*"):
        if stale != house:
            shutil.rmtree(stale, ignore_errors=True)
    return house


def link_wheelhouse(house: Path, context: Path) -> None:
    """Put the wheels into the build context (hard links where the file system allows)."""
    dest = context / WHEELHOUSE_DIR
    dest.mkdir()
    for wheel in house.glob("*.whl"):
        try:
            os.link(wheel, dest / wheel.name)
        except OSError:
            shutil.copy2(wheel, dest / wheel.name)


# --------------------------------------------------------------------------- 4. offline edits

@dataclass
class DockerfileEdit:
    """One edit of the packager's Dockerfile: instructions ``match`` picks are passed to ``apply``
    (which returns their replacement: lines, possibly none). ``expect``: how many must match."""

    name: str
    why: str
    match: Callable[[str], bool]
    apply: Callable[[str], list[str]]
    expect: int = 1


def _comment(why: str) -> Callable[[str], list[str]]:
    return lambda _instr: [f"# [offline edit] removed: {why}"]


def _pip_from_wheelhouse(instr: str) -> list[str]:
    rest = instr[len("RUN pip install"):]
    return [f"RUN --mount=type=bind,source={WHEELHOUSE_DIR},target={WHEELHOUSE_MOUNT} "
            f"pip install --no-index --find-links {WHEELHOUSE_MOUNT}{rest}"]


def _python_311(instr: str) -> list[str]:
    return [instr.replace("python3.12", f"python{BASE_PYTHON}")]


def _user_then_userbase(instr: str) -> list[str]:
    return [instr, "ENV PYTHONUSERBASE=/home/${UNAME}/.local"]


def _then_first_start(instr: str) -> list[str]:
    return [instr, 'RUN python3 -c "import holoscan, monai.deploy, torch"']


DOCKERFILE_EDITS: tuple[DockerfileEdit, ...] = (
    DockerfileEdit("base tools", "jq is in the base image; curl was only needed for the CUDA keyring",
                   lambda i: i.startswith("RUN apt-get update") and " curl" in i and " jq" in i,
                   _comment("apt-get install curl jq (jq is in the local base image)")),
    DockerfileEdit("CUDA keyring", "downloads NVIDIA's apt keyring; no CUDA packages are installed",
                   lambda i: i.startswith("RUN ") and "cuda-keyring" in i,
                   _comment("NVIDIA CUDA apt keyring download (no CUDA packages are installed)")),
    DockerfileEdit("Ubuntu python3", "installs Ubuntu 24.04's python3 3.12 with apt; the base has Debian's 3.11",
                   lambda i: i.startswith("RUN apt") and "python3-minimal" in i,
                   _comment("apt-get install python3 (Debian's python3, python3-pip are in the base image)")),
    DockerfileEdit("Ubuntu python3 versions", "version pins of the removed apt step",
                   lambda i: re.match(r"ENV PYTHON(_PIP)?_VERSION=", i) is not None, lambda _i: [], expect=2),
    DockerfileEdit("Python 3.11 paths", "EXTERNALLY-MANAGED and the holoscan library path are Python 3.12's",
                   lambda i: "python3.12" in i, _python_311, expect=2),
    DockerfileEdit("user site", "the packages installed for the image's user are found under any --user",
                   lambda i: i == "USER $UNAME", _user_then_userbase),
    DockerfileEdit("pip from the wheelhouse", "every pip install takes wheels from the host-made wheelhouse only",
                   lambda i: i.startswith("RUN pip install"), _pip_from_wheelhouse, expect=3),
    DockerfileEdit("first start in the build", "holoscan-cu13 finishes its install (wheel-axle) at the first Python "
                   "start; done in the build, the image's files stay as built and later pip calls work",
                   lambda i: i.startswith("RUN --mount") and "-r /tmp/requirements.txt" in i, _then_first_start),
)


def dockerfile_instructions(text: str) -> list[str]:
    """The Dockerfile split into instructions (continuation lines joined with their ``\\`` and
    newlines kept), comments and blank lines, in order; joining them with newlines gives it back."""
    items: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if current:
            current.append(line)
            if not line.rstrip().endswith("\\"):
                items.append("\n".join(current))
                current = []
        elif line.rstrip().endswith("\\") and not line.lstrip().startswith("#"):
            current = [line]
        else:
            items.append(line)
    if current:
        items.append("\n".join(current))
    return items


def offline_dockerfile(text: str, edits: tuple[DockerfileEdit, ...] = DOCKERFILE_EDITS) -> str:
    """The packager's Dockerfile with :data:`DOCKERFILE_EDITS` applied and listed in a header.

    Raises ImageBuildError when an edit does not find what it expects (another packager version),
    or when a step that would reach a network is left."""
    items = dockerfile_instructions(text)
    for edit in edits:
        hits = [k for k, item in enumerate(items) if edit.match(item)]
        if len(hits) != edit.expect:
            raise ImageBuildError(f"offline edit '{edit.name}': expected {edit.expect} matching instruction(s) in "
                                  f"the packager's Dockerfile, found {len(hits)} (packager other than holoscan-cli 4.2.0?)")
        for k in reversed(hits):
            items[k:k + 1] = edit.apply(items[k])
    out = "\n".join(items) + "\n"
    for item in dockerfile_instructions(out):
        if item.startswith("RUN") and re.search(r"\b(apt-get|apt|curl|wget)\b|https?://", item):
            raise ImageBuildError(f"a build step would reach a network: {item.splitlines()[0]}")
        if item.startswith("FROM") and "nvcr.io" in item:
            raise ImageBuildError(f"the Dockerfile still starts from a remote image: {item}")
    header = ["# Edited for an offline build by scripts/map_image.py (see its docstring); the packager's",
              "# Dockerfile is otherwise unchanged. Edits:"]
    header += [f"#   - {e.name}: {e.why}" for e in edits]
    return "\n".join(header) + "\n\n" + out


TOOLS_EXIT_MARK = '        else\n            fatal "Failed to launch application'


def tools_with_exit_status(text: str) -> str:
    """The packager's ``tools`` entry point, made to exit with the application's exit status
    (holoscan-cli 4.2.0 logs it and then ends the script with status 0)."""
    if text.count(TOOLS_EXIT_MARK) != 1 or 'info "Application exited with ${exit_code}."' not in text:
        raise ImageBuildError("the packager's tools script is not the one this script knows (holoscan-cli 4.2.0)")
    return text.replace(TOOLS_EXIT_MARK, "            exit ${exit_code}\n" + TOOLS_EXIT_MARK)


# --------------------------------------------------------------------------- 3 + 5. packager and build

@dataclass
class BuildResult:
    tag: str
    base_tag: str
    image_id: str
    size_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    context: Path | None = None


def packager_context(base_tag: str, models: Path, manifest: Path, config: Path, requirements: Path,
                     cache: Path) -> package_map.PackagerRun:
    """Run the SDK's packager (``monai-deploy package``) up to its build context."""
    args = package_map.build_parser().parse_args([
        "--context-only", "--base-image", base_tag, "-m", str(models), "--manifest", str(manifest),
        "-c", str(config), "--requirements", str(requirements), "--stage", str(cache / "stage"),
        "-o", str(cache / "map")])
    code, run = package_map.package(args)
    if code != 0 or run is None or run.context is None:
        raise ImageBuildError(f"the packager failed (exit {code}); see its messages above")
    return run


def docker_build(engine: Engine, context: Path, tag: str, build_args: dict[str, str], no_cache: bool,
                 log_path: Path) -> None:
    """``docker build`` (BuildKit, no network) with progress lines; full log in ``log_path``."""
    cmd = [engine.client, "build", "--network=none", "--progress=plain", "-t", tag, "-f", str(context / "Dockerfile")]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if no_cache:
        cmd.append("--no-cache")
    cmd.append(str(context))
    tail: list[str] = []
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, env=engine.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            tail = (tail + [line.rstrip()])[-40:]
            if re.match(r"#\d+ \[", line) or re.match(r"#\d+ (DONE|CACHED)", line):
                log(f"[build] {line.rstrip()[:160]}")
        proc.wait()
    if proc.returncode != 0:
        raise ImageBuildError("docker build failed:\n" + "\n".join(tail) + f"\n(full log: {log_path})")


def build(engine: Engine, models: Path = ROOT / "models", manifest: Path = ROOT / "model_manifest.json",
          config: Path = ROOT / "app.yaml", requirements: Path = ROOT / "requirements.txt",
          cache: Path = CACHE, no_cache: bool = False) -> BuildResult:
    """Every step of the module docstring; returns the image and the time of each step."""
    cache.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    base_tag = ensure_base_image(engine, cache)
    seconds["base image"] = time.perf_counter() - t0

    t = time.perf_counter()
    house = ensure_wheelhouse(requirements, cache)
    seconds["wheelhouse"] = time.perf_counter() - t

    t = time.perf_counter()
    run = packager_context(base_tag, models, manifest, config, requirements, cache)
    context = run.context
    assert context is not None
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(offline_dockerfile(dockerfile.read_text()))
    (context / "tools").write_text(tools_with_exit_status((context / "tools").read_text()))
    link_wheelhouse(house, context)
    seconds["packager"] = time.perf_counter() - t

    tag = run.tags[0]
    previous = image_id(engine, tag)
    t = time.perf_counter()
    docker_build(engine, context, tag, run.build_args, no_cache, cache / "build.log")
    seconds["docker build"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    info = json.loads(engine.run("image", "inspect", "--format", "{{json .}}", tag).stdout)
    if previous and previous != info["Id"]:
        engine.run("rmi", previous, check=False)  # the image this build replaced, now untagged
    result = BuildResult(tag=tag, base_tag=base_tag, image_id=info["Id"], size_bytes=int(info["Size"]),
                         seconds=seconds, labels=info["Config"].get("Labels") or {}, context=context)
    record = {**result.__dict__, "context": str(context), "no_cache": no_cache}
    (cache / "last_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- run

def docker_run_args(tag: str, input_dir: Path, output_dir: Path, name: str | None = None) -> list[str]:
    """``docker run`` arguments for a CPU host: no network, the stack Holoscan wants, the caller's
    UID/GID (the output belongs to them), input read-only at /var/holoscan/input, output at
    /var/holoscan/output."""
    args = ["run", "--rm", "--network", "none", "--ulimit", f"stack={STACK_BYTES}",
            "--user", f"{os.getuid()}:{os.getgid()}",
            "-v", f"{Path(input_dir).resolve()}:{CONTAINER_INPUT}:ro",
            "-v", f"{Path(output_dir).resolve()}:{CONTAINER_OUTPUT}"]
    if name:
        args += ["--name", name]
    return [*args, tag]


def run_image(engine: Engine, tag: str, input_dir: Path, output_dir: Path,
              timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the image on ``input_dir``; ``output_dir`` is created first (so it belongs to the caller)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    name = f"pdac-ln-met-run-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return engine.run(*docker_run_args(tag, input_dir, output_dir, name), check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        engine.run("rm", "-f", name, check=False)
        raise


VOLATILE_KEYS = frozenset({"created", "timings_s"})
"""results.json keys that differ between any two runs: when, and how long each stage took."""
NEW_UID_KEYS = frozenset({"tracking_uid", "sop_instance_uid", "series_instance_uid"})
"""UIDs every run makes anew: of the output objects and of each node; only where those are listed."""
NEW_UID_SECTIONS = ("outputs", "lymph_nodes")


def results_differences(expected: Any, actual: Any, path: tuple = ()) -> list[str]:
    """Where two results.json documents differ, apart from timings and newly made UIDs (which must
    still be there). Everything else, numbers included, must be equal exactly."""
    where = "/".join(map(str, path)) or "(document)"
    if isinstance(expected, dict) and isinstance(actual, dict):
        diffs = [f"{where}: keys {sorted(set(expected) ^ set(actual))} in only one"] if set(expected) != set(actual) else []
        for key in sorted(set(expected) & set(actual)):
            if key in VOLATILE_KEYS and not path:
                continue
            if key in NEW_UID_KEYS and path and path[0] in NEW_UID_SECTIONS:
                if not (isinstance(expected[key], str) and isinstance(actual[key], str) and actual[key]):
                    diffs.append(f"{where}/{key}: not a UID in both")
                continue
            diffs += results_differences(expected[key], actual[key], (*path, key))
        return diffs
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items against {len(actual)}"]
        return [d for k, (a, b) in enumerate(zip(expected, actual)) for d in results_differences(a, b, (*path, k))]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: {expected!r} against {actual!r}"]
    return []


def compare_outputs(expected_dir: Path, actual_dir: Path) -> list[str]:
    """Differences between two output folders of the app: results.json (:func:`results_differences`)
    and the SEG's pixel data, frame by frame with each frame's segment and position. Empty: same."""
    import pydicom

    expected_dir, actual_dir = Path(expected_dir), Path(actual_dir)
    diffs = []
    for rel in ("results.json", "SEG/seg.dcm", "SR/sr.dcm", "PDF/report.pdf", "PDF/report.dcm"):
        missing = [str(d / rel) for d in (expected_dir, actual_dir) if not (d / rel).is_file()]
        if missing:
            diffs.append(f"missing: {', '.join(missing)}")
    if diffs:
        return diffs
    diffs += results_differences(json.loads((expected_dir / "results.json").read_text()),
                                 json.loads((actual_dir / "results.json").read_text()))
    segs = [pydicom.dcmread(d / "SEG" / "seg.dcm") for d in (expected_dir, actual_dir)]

    def frames(ds: Any) -> list[tuple]:
        return [(str(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                 tuple(f.PlanePositionSequence[0].ImagePositionPatient)) for f in ds.PerFrameFunctionalGroupsSequence]

    if frames(segs[0]) != frames(segs[1]):
        diffs.append("SEG: frames (segment, position) differ")
    elif segs[0].PixelData != segs[1].PixelData:
        diffs.append("SEG: pixel data differ")
    return diffs


def default_tag() -> str:
    """The tag of the last build (build/map_image/last_build.json)."""
    record = CACHE / "last_build.json"
    if not record.is_file():
        raise ImageBuildError(f"no image built yet ({record} missing): run scripts/build_map_image.sh")
    return json.loads(record.read_text())["tag"]


def _print_build(result: BuildResult) -> None:
    size = result.size_bytes / 1e9
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    log(f"[image] {result.tag} ({result.image_id[:19]}), {size:.2f} GB, base {result.base_tag}")
    log(f"[image] times: {times}")
    for key in sorted(result.labels):
        log(f"[image] label {key}={result.labels[key]}")
    log("[image] run it (CPU host): docker run --rm --network none --ulimit stack=33554432 "
        f"--user \"$(id -u):$(id -g)\" -v INPUT:{CONTAINER_INPUT}:ro -v OUTPUT:{CONTAINER_OUTPUT} {result.tag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the MAP image (cached steps)")
    b.add_argument("-m", "--models", type=Path, default=ROOT / "models")
    b.add_argument("--manifest", type=Path, default=ROOT / "model_manifest.json")
    b.add_argument("-c", "--config", type=Path, default=ROOT / "app.yaml")
    b.add_argument("--no-cache", action="store_true", help="docker build --no-cache (base and wheelhouse still reused)")
    b.add_argument("--cold", action="store_true",
                   help="remove the cached base image and wheelhouse first and build without cache (a cold build)")
    b.add_argument("--keep-engine", action="store_true", help="leave a dockerd started here running")
    r = sub.add_parser("run", help="docker run the image on a DICOM folder")
    r.add_argument("-i", "--input", type=Path, required=True)
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("-t", "--tag", help="image (default: the last one built)")
    r.add_argument("--keep-engine", action="store_true")
    args = parser.parse_args(argv)

    try:
        with docker_engine(ROOT / "build" / "docker", keep=args.keep_engine, log=log) as engine:
            if args.command == "build":
                if args.cold:
                    tag = base_image_tag()
                    engine.run("rmi", tag, check=False)
                    for stale in [*CACHE.glob("base-*.tar"), *CACHE.glob("wheelhouse-*")]:
                        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
                result = build(engine, args.models, args.manifest, args.config, no_cache=args.no_cache or args.cold)
                _print_build(result)
                return 0
            tag = args.tag or default_tag()
            log("[run] docker " + " ".join(docker_run_args(tag, args.input, args.output)))
            done = run_image(engine, tag, args.input, args.output)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            return done.returncode
    except (DockerUnavailable, ImageBuildError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
