"""The MAP image: scripts/map_image.py (scripts/build_map_image.sh) builds it offline and runs it.

Two groups of tests:

* Always: the offline edits of the packager's real Dockerfile (holoscan-cli 4.2.0, written with
  ``--base-image``), the fix of its ``tools`` entry point, and the comparison of two runs' outputs.
* With ``PDAC_LN_TEST_MAP_IMAGE=1`` (``.ci/run`` sets it): build the image (cached steps under
  build/map_image/, so about 20 s when nothing changed; a cold build on a clean machine takes a
  few minutes more) with the bundled models, check what it carries, run it with ``docker run`` on the
  tiny study and compare with the bare app on the same study, and on a bad input. Needs root or
  passwordless sudo (apt for docker.io/debootstrap, dockerd); where no engine can be had the tests
  skip, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.application import required_models
from app_support import last_error_line, make_standin_models, run_app
from lnmet.model_manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "holoscan-cli" / "artifacts-4.2.0.json"
SWITCH = "PDAC_LN_TEST_MAP_IMAGE"
sys.path.insert(0, str(ROOT / "scripts"))
import map_image  # noqa: E402
from docker_engine import DockerUnavailable, docker_engine  # noqa: E402

sys.path.remove(str(ROOT / "scripts"))


DEFAULT_BASE = "nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"  # the manifest's base for x86_64 dGPU


@pytest.fixture(scope="module")
def packager_context(tmp_path_factory) -> Path:
    """The packager's build context (stand-in models: only the Dockerfile and tools matter here).

    The packager's ``--base-image`` asks a Docker engine whether the image exists, so here it runs
    without it and the base is put in as the template does (``FROM <base> AS base``, ``LABEL base``);
    the image tests below use the real option."""
    if not SOURCE.is_file():
        pytest.skip(f"packager artifact manifest not found at {SOURCE} (needed offline)")
    tmp = tmp_path_factory.mktemp("offline")
    models, manifest = make_standin_models(tmp / "standins", names=["standin_a"])
    args = map_image.package_map.build_parser().parse_args([
        "--context-only", "-m", str(models), "--manifest", str(manifest), "--stage", str(tmp / "stage"),
        "-o", str(tmp / "map")])
    code, run = map_image.package_map.package(args)
    assert code == 0 and run is not None and run.context is not None
    assert run.build_args == {"UID": "1000", "GID": "1000", "UNAME": "holoscan", "GPU_TYPE": "dgpu"}
    dockerfile = run.context / "Dockerfile"
    text = dockerfile.read_text()
    assert f"FROM {DEFAULT_BASE} AS base" in text and f'LABEL base="{DEFAULT_BASE}"' in text
    dockerfile.write_text(text.replace(DEFAULT_BASE, "pdac-ln-met-base:test"))
    return run.context


def _instructions(text: str) -> list[str]:
    return [i for i in map_image.dockerfile_instructions(text) if i.strip() and not i.lstrip().startswith("#")]


def test_offline_dockerfile_reaches_no_network_and_installs_from_the_wheelhouse(packager_context):
    original = (packager_context / "Dockerfile").read_text()
    assert "FROM pdac-ln-met-base:test AS base" in original  # the packager's --base-image
    edited = map_image.offline_dockerfile(original)
    runs = [i for i in _instructions(edited) if i.startswith("RUN")]
    assert runs
    for instr in runs:
        assert not any(word in instr for word in ("apt-get", "apt ", "curl", "http://", "https://")), instr
    pips = [i for i in runs if " pip install" in i]
    assert len(pips) == 3
    for instr in pips:
        assert instr.startswith("RUN --mount=type=bind,source=wheelhouse,target=/tmp/wheelhouse pip install "
                                "--no-index --find-links /tmp/wheelhouse"), instr
    assert [i for i in _instructions(edited) if i.startswith("FROM")] == ["FROM pdac-ln-met-base:test AS base",
                                                                          "FROM base AS release"]
    assert "python3.12" not in edited and "rm -rf /usr/lib/python3.11/EXTERNALLY-MANAGED" in edited
    assert "ENV PYTHONUSERBASE=/home/${UNAME}/.local" in edited


def test_offline_dockerfile_keeps_everything_else_of_the_packager(packager_context):
    """Labels, environment, manifests, models, application and entry point are the packager's own."""
    original = _instructions((packager_context / "Dockerfile").read_text())
    edited = _instructions(map_image.offline_dockerfile((packager_context / "Dockerfile").read_text()))
    kept = [i for i in original if i.startswith(("LABEL", "COPY", "ENTRYPOINT", "WORKDIR", "USER", "ARG"))
            or (i.startswith("ENV") and "python3.12" not in i and "PYTHON_" not in i)]
    assert kept and all(i in edited for i in kept)
    labels = "\n".join(i for i in edited if i.startswith("LABEL"))
    for key in ("org.opencontainers.image.title", "org.opencontainers.image.version", "org.nvidia.holoscan",
                "org.monai.deploy.app-sdk", "base"):
        assert f"LABEL {key}=" in labels
    for path in ("/etc/holoscan/app.json", "/etc/holoscan/pkg.json", "/opt/holoscan/models", "/opt/holoscan/app"):
        assert any(i.startswith("COPY") and i.endswith(path) for i in edited), path


def test_offline_dockerfile_refuses_a_dockerfile_it_does_not_know(packager_context):
    text = (packager_context / "Dockerfile").read_text()
    without_keyring = "\n".join(i for i in map_image.dockerfile_instructions(text) if "cuda-keyring" not in i)
    with pytest.raises(map_image.ImageBuildError, match="CUDA keyring"):
        map_image.offline_dockerfile(without_keyring)
    remote = text.replace("FROM pdac-ln-met-base:test AS base", "FROM nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS base")
    with pytest.raises(map_image.ImageBuildError, match="remote image"):
        map_image.offline_dockerfile(remote)


def test_tools_entry_point_exits_with_the_application_status(packager_context, tmp_path):
    """The packager's tools script logs the application's exit status and then exits 0; the edited
    one exits with it (run here with a stand-in command in the app manifest)."""
    if shutil.which("jq") is None or shutil.which("bash") is None:
        pytest.skip("jq and bash are needed to run the tools script")
    original = (packager_context / "tools").read_text()
    failing_app = tmp_path / "failing_app.sh"
    failing_app.write_text("echo 'ERROR: bad input' >&2\nexit 3\n")
    manifest = tmp_path / "app.json"
    manifest.write_text(json.dumps({"command": json.dumps(["sh", str(failing_app)])}))
    env = {**os.environ, "HOLOSCAN_APP_MANIFEST_PATH": str(manifest)}
    codes = {}
    for name, text in (("packager", original), ("edited", map_image.tools_with_exit_status(original))):
        script = tmp_path / f"tools_{name}"
        script.write_text(text)
        script.chmod(0o755)
        done = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
        assert "ERROR: bad input" in done.stderr
        codes[name] = done.returncode
    assert codes == {"packager": 0, "edited": 3}


def test_results_differences_ignore_only_timings_and_new_uids():
    doc = {"created": "t0", "timings_s": {"a": 1.0}, "study": {"study_instance_uid": "1.2.3"},
           "lymph_nodes": [{"tracking_uid": "1.2.4", "volume_mm3": 27.0}],
           "outputs": {"seg": {"sop_instance_uid": "1.2.5", "path": "SEG/seg.dcm"}}}
    same = json.loads(json.dumps(doc))
    same.update(created="t1", timings_s={"a": 2.0})
    same["lymph_nodes"][0]["tracking_uid"] = "1.2.9"
    same["outputs"]["seg"]["sop_instance_uid"] = "1.2.8"
    assert map_image.results_differences(doc, same) == []
    other = json.loads(json.dumps(same))
    other["lymph_nodes"][0]["volume_mm3"] = 27.000001
    other["study"]["study_instance_uid"] = "1.2.30"
    assert map_image.results_differences(doc, other) == ["lymph_nodes/0/volume_mm3: 27.0 against 27.000001",
                                                         "study/study_instance_uid: '1.2.3' against '1.2.30'"]


# --------------------------------------------------------------------------- the image itself

@pytest.fixture(scope="module")
def engine():
    if os.environ.get(SWITCH) != "1":
        pytest.skip(f"building and running the MAP image is switched off: set {SWITCH}=1 (.ci/run does) to run it; "
                    "about 6-10 minutes on a 2-core machine, needs Docker or root/sudo to start one")
    try:
        with docker_engine(ROOT / "build" / "docker", log=print) as eng:
            yield eng
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine can be used here: {exc}")


@pytest.fixture(scope="module")
def image(engine) -> map_image.BuildResult:
    models, manifest = ROOT / "models", ROOT / MANIFEST_NAME
    if not manifest.is_file() or not all((models / m).is_dir() for m in required_models()):
        pytest.skip("the bundled models are not there")
    try:
        return map_image.build(engine, models, manifest)
    except map_image.ImageBuildError as exc:
        pytest.fail(f"image build failed: {exc}")


def _in_image(engine, image, *cmd: str) -> str:
    done = engine.run("run", "--rm", "--network", "none", "--entrypoint", cmd[0], image.tag, *cmd[1:], check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_image_carries_the_map_manifests_models_and_labels(engine, image):
    ctx = image.context
    assert json.loads(_in_image(engine, image, "cat", "/etc/holoscan/app.json")) == json.loads((ctx / "map" / "app.json").read_text())
    assert json.loads(_in_image(engine, image, "cat", "/etc/holoscan/pkg.json")) == json.loads((ctx / "map" / "pkg.json").read_text())
    sums = _in_image(engine, image, "sh", "-c", "cd /opt/holoscan/models && sha256sum */*")
    in_image = {line.split()[1]: line.split()[0] for line in sums.splitlines()}
    manifest = json.loads((ROOT / MANIFEST_NAME).read_text())["models"]
    assert in_image == {e["file"]: e["sha256"] for e in manifest}
    for entry in manifest:
        assert hashlib.sha256((ROOT / "models" / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    version = json.loads((ctx / "map" / "app.json").read_text())
    assert image.labels["org.monai.deploy.app-sdk"] == "4.0.0" and image.labels["org.nvidia.holoscan"] == "4.2.0"
    assert image.labels["base"] == image.base_tag and image.labels["org.opencontainers.image.version"] == "0.1.0"
    assert image.labels["org.opencontainers.image.title"]
    assert version["command"] == '["python3", "/opt/holoscan/app"]'


def test_image_holds_cpu_torch_and_runtime_dependencies_only(engine, image):
    out = _in_image(engine, image, "python3", "-c",
                    "import torch, importlib.metadata as m; print(torch.__version__, torch.version.cuda); "
                    "print(' '.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))")
    first, names = out.strip().splitlines()[-2:]
    assert first == "2.13.0+cpu None"
    names = set(names.split())
    assert {"monai-deploy-app-sdk", "holoscan-cu13", "monai", "highdicom", "simpleitk"} <= names
    assert not names & {"pytest", "pynetdicom"}, "test tools must stay out of the image"
    assert not names & {"ray", "pyarrow"}, "the cohort command's dependencies stay out of the image"


@pytest.fixture(scope="module")
def bare_and_image_runs(engine, image, tiny_study_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bare_vs_image")
    bare = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(tmp / "bare"), "-m", str(ROOT / "models")],
                   timeout=1200)
    ran = map_image.run_image(engine, image.tag, tiny_study_dir / "dicom", tmp / "image", timeout=1200)
    return {"bare": bare, "image": ran, "tmp": tmp}


def test_image_results_equal_the_bare_apps(bare_and_image_runs):
    runs = bare_and_image_runs
    assert runs["bare"].returncode == 0, runs["bare"].stderr[-3000:]
    assert runs["image"].returncode == 0, runs["image"].stderr[-3000:]
    assert "outputs in /var/holoscan/output" in runs["image"].stderr
    diffs = map_image.compare_outputs(runs["tmp"] / "bare", runs["tmp"] / "image")
    assert diffs == [], "\n".join(diffs)
    owner = {p.stat().st_uid for p in (runs["tmp"] / "image").rglob("*")}
    assert owner == {os.getuid()}, "the outputs belong to the user who ran the image"


def test_image_fails_on_a_bad_input_as_the_bare_app_does(engine, image, tiny_study_dir, tmp_path):
    """Venous phase only (no arterial): same one-line error, non-zero exit, nothing written."""
    venous_only = tmp_path / "venous_only"
    shutil.copytree(tiny_study_dir / "dicom" / "venous", venous_only / "venous")
    bare = run_app(["-i", str(venous_only), "-o", str(tmp_path / "bare"), "-m", str(ROOT / "models")])
    ran = map_image.run_image(engine, image.tag, venous_only, tmp_path / "image", timeout=600)
    assert bare.returncode == 1 and ran.returncode == bare.returncode, ran.stderr[-3000:]
    bare_error = last_error_line(bare)
    image_errors = [line for line in ran.stderr.splitlines() if line.startswith("ERROR: ")]
    assert bare_error.startswith("ERROR: PhaseSelectionError")
    assert image_errors == [bare_error.replace(str(venous_only), map_image.CONTAINER_INPUT)]
    assert not (tmp_path / "bare").exists() or not any((tmp_path / "bare").iterdir())
    assert not any((tmp_path / "image").iterdir())
