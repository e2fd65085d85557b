"""MAP packaging: scripts/package_map.py runs the real `monai-deploy package` up to the image build.

The packager (holoscan-cli 4.2.0) writes its Dockerfile and build context and would then call
`docker buildx`; with --context-only the script stops there and keeps the context. These tests
check that context: application, models, requirements and config all inside, and the staged
application starts from its own folder and runs the whole graph from there. The image itself is
built and run by tests/test_map_image.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.application import required_models
from app_support import _big_stack, make_standin_models
from lnmet.model_manifest import MANIFEST_NAME, sha256_file

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "holoscan-cli" / "artifacts-4.2.0.json"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> dict:
    if not SOURCE.is_file():
        pytest.skip(f"packager artifact manifest not found at {SOURCE} (needed offline)")
    tmp = tmp_path_factory.mktemp("map")
    models, manifest = make_standin_models(tmp / "standins", names=required_models())
    out = tmp / "map"
    cmd = [sys.executable, str(ROOT / "scripts" / "package_map.py"), "--context-only",
           "-m", str(models), "--manifest", str(manifest), "--stage", str(tmp / "stage"), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"context": out / "context", "models": models, "manifest": manifest, "stdout": done.stdout,
            "stage": tmp / "stage" / "app"}


def test_dockerfile_copies_application_models_and_config(packaged):
    dockerfile = (packaged["context"] / "Dockerfile").read_text()
    settings = yaml.safe_load((ROOT / "app.yaml").read_text())
    assert re.search(r"^COPY \./app /opt/holoscan/app$", dockerfile, re.M)
    assert re.search(r"^COPY \./models\s+/opt/holoscan/models$", dockerfile, re.M)
    assert re.search(r"^COPY \./app\.config /var/holoscan/app\.yaml$", dockerfile, re.M)
    assert "pip install --no-cache-dir --user -r /tmp/requirements.txt" in dockerfile
    assert f'org.opencontainers.image.version="{settings["application"]["version"]}"' in dockerfile
    assert "ENV HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml" in dockerfile
    assert "ENV HOLOSCAN_MODEL_PATH=/opt/holoscan/models" in dockerfile


def test_context_holds_the_staged_application(packaged):
    app = packaged["context"] / "app"
    for rel in ("__main__.py", "app/application.py", "app/startup.py", "lnmet/config.py",
                "lnmet/model_manifest.py", "app.yaml", "model_manifest.json", "requirements.txt"):
        assert (app / rel).is_file(), f"{rel} missing from the build context"
    for module in (ROOT / "operators").glob("*.py"):
        assert (app / "operators" / module.name).is_file(), f"operators/{module.name} missing"
    assert not list(app.rglob("__pycache__")), "caches must not be packaged"
    assert (app / "app.yaml").read_bytes() == (ROOT / "app.yaml").read_bytes()
    assert (packaged["context"] / "app.config").read_bytes() == (ROOT / "app.yaml").read_bytes()


def test_context_requirements_include_our_pins(packaged):
    reqs = (packaged["context"] / "pip" / "requirements.txt").read_text().split()
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins, "requirements.txt has no pins"
    for pin in pins:
        assert pin in reqs, f"{pin} missing from the packaged requirements"


def test_context_models_match_manifest(packaged):
    manifest = json.loads(packaged["manifest"].read_text())
    assert manifest["models"]
    for entry in manifest["models"]:
        packed = packaged["context"] / "models" / entry["file"]
        assert packed.is_file(), f"model {entry['file']} missing from the build context"
        assert sha256_file(packed) == entry["sha256"]
    pkg = json.loads((packaged["context"] / "map" / "pkg.json").read_text())
    assert set(pkg["models"]) == {e["name"] for e in manifest["models"]}
    settings = yaml.safe_load((ROOT / "app.yaml").read_text())
    assert pkg["resources"] == settings["resources"]
    app_json = json.loads((packaged["context"] / "map" / "app.json").read_text())
    assert app_json["command"] == '["python3", "/opt/holoscan/app"]'
    assert app_json["input"]["formats"] == settings["application"]["input-formats"]
    assert app_json["output"]["formats"] == settings["application"]["output-formats"]


def test_staged_application_starts_from_its_own_folder(packaged, tmp_path):
    """The context's app folder runs alone (imports, config at HOLOSCAN_CONFIG_PATH, manifest beside
    it, models at HOLOSCAN_MODEL_PATH): every start-up check passes and the graph starts, then the
    study loader refuses an input without DICOM (paths are checked before the start-up checks, so the
    input must exist and hold a file)."""
    ctx = packaged["context"]
    given = tmp_path / "input"
    given.mkdir()
    (given / "notes.txt").write_text("not DICOM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    env.update(HOLOSCAN_CONFIG_PATH=str(ctx / "app.config"), HOLOSCAN_MODEL_PATH=str(ctx / "models"),
               HOLOSCAN_INPUT_PATH=str(given), HOLOSCAN_OUTPUT_PATH=str(tmp_path / "out"), PYTHONPATH="")
    done = subprocess.run([sys.executable, str(ctx / "app")], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: DicomInputError: no readable DICOM file") and str(given) in last
    log = done.stderr
    assert f"settings: {ctx / 'app.config'}" in log
    for name in required_models():
        assert f"model {name} 0.0.1 verified" in log
    assert f"application root: {ctx / 'app'}" in log, "the staged app must run from its own folder"
    assert "stage 'study_loader' started" in log
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def packaged_bundled(tmp_path_factory) -> Path:
    """The packager's context with the bundled models, as the image gets it (these run faster than
    the stand-ins, whose small patches make many more sliding windows)."""
    if not SOURCE.is_file():
        pytest.skip(f"packager artifact manifest not found at {SOURCE} (needed offline)")
    if not (ROOT / MANIFEST_NAME).is_file() or not all((ROOT / "models" / m).is_dir() for m in required_models()):
        pytest.skip("the bundled models are not there")
    tmp = tmp_path_factory.mktemp("map_bundled")
    cmd = [sys.executable, str(ROOT / "scripts" / "package_map.py"), "--context-only", "--stage", str(tmp / "stage"),
           "-o", str(tmp / "map")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp / "map" / "context"


def test_staged_application_writes_every_output_from_its_own_folder(packaged_bundled, tiny_study_dir, tmp_path):
    """The staged app, as the image runs it (only the HOLOSCAN_* variables, nothing from the source
    tree on its path), goes through the whole graph on a tiny study and writes all five outputs:
    whatever it reads at run time (schemas included) travels with it."""
    import jsonschema
    import pydicom

    ctx = packaged_bundled
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDAC_LN_", "HOLOSCAN_"))}
    env.update(HOLOSCAN_CONFIG_PATH=str(ctx / "app.config"), HOLOSCAN_MODEL_PATH=str(ctx / "models"),
               HOLOSCAN_INPUT_PATH=str(tiny_study_dir / "dicom"), HOLOSCAN_OUTPUT_PATH=str(out), PYTHONPATH="")
    done = subprocess.run([sys.executable, str(ctx / "app")], capture_output=True, text=True, timeout=900,
                          env=env, cwd=tmp_path, preexec_fn=_big_stack)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"application root: {ctx / 'app'}" in done.stderr
    for rel in ("SEG/seg.dcm", "SR/sr.dcm", "PDF/report.pdf", "PDF/report.dcm", "results.json"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, f"{rel} missing"
    results = json.loads((out / "results.json").read_text())
    staged_schema = json.loads((ctx / "app" / "lnmet" / "schemas" / "results.schema.json").read_text())
    jsonschema.validate(results, staged_schema)
    gt = json.loads((tiny_study_dir / "ground_truth" / "study.json").read_text())
    assert results["study"]["study_instance_uid"] == gt["study_instance_uid"]
    assert {m["name"] for m in results["models"]} == set(required_models())
    sop_classes = {"SEG/seg.dcm": "1.2.840.10008.5.1.4.1.1.66.4", "SR/sr.dcm": "1.2.840.10008.5.1.4.1.1.88.34",
                   "PDF/report.dcm": "1.2.840.10008.5.1.4.1.1.104.1"}
    for rel, sop_class in sop_classes.items():
        ds = pydicom.dcmread(out / rel, stop_before_pixels=True)
        assert ds.SOPClassUID == sop_class and ds.StudyInstanceUID == gt["study_instance_uid"]
    assert (out / "PDF" / "report.pdf").read_bytes().startswith(b"%PDF")


def test_without_docker_engine_the_context_is_kept_and_the_failure_reported(tmp_path):
    """Default mode runs the packager on to `docker buildx`; without an engine it fails clearly."""
    if not SOURCE.is_file():
        pytest.skip(f"packager artifact manifest not found at {SOURCE}")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import package_map
    finally:
        sys.path.pop(0)
    if package_map.docker_engine_available():
        pytest.skip("a Docker engine is available here: the image would really be built")
    models, manifest = make_standin_models(tmp_path / "standins", names=["standin_a"])
    out = tmp_path / "map"
    cmd = [sys.executable, str(ROOT / "scripts" / "package_map.py"), "-m", str(models), "--manifest", str(manifest),
           "--stage", str(tmp_path / "stage"), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1
    assert "ERROR: the image was not built" in done.stderr
    assert (out / "context" / "Dockerfile").is_file()
    assert (out / "context" / "models" / "standin_a" / "model.ts").is_file()


def test_packaging_refuses_a_corrupted_model(tmp_path):
    models, manifest = make_standin_models(tmp_path / "standins", names=["standin_a"])
    with open(models / "standin_a" / "model.ts", "r+b") as f:
        f.seek(100)
        f.write(b"\x00corrupt\x00")
    cmd = [sys.executable, str(ROOT / "scripts" / "package_map.py"), "--context-only", "-m", str(models),
           "--manifest", str(manifest), "--stage", str(tmp_path / "stage"), "-o", str(tmp_path / "map")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 3
    assert "SHA-256 mismatch" in done.stderr and "standin_a" in done.stderr
    assert not (tmp_path / "map" / "context").exists()
