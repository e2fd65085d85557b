"""Failure paths of the whole application (``python app`` in a subprocess, a real Holoscan run).

Each ends with exit status != 0, a clear one-line ``ERROR: ...`` as the last line on stderr, and no
partial output: an output folder that did not exist is not left behind, one that existed keeps
exactly its previous content. Stand-in models (tests/app_support.py) and a temporary manifest are
used, so these tests need neither the bundled models nor the later stages of the graph.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from app.application import required_models
from app_support import last_error_line, make_standin_models, run_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pristine_standins(tmp_path_factory):
    return make_standin_models(tmp_path_factory.mktemp("standins"), names=required_models() or ("standin_a",))


@pytest.fixture()
def standins(tmp_path, pristine_standins):
    """A private copy of the stand-in models and their manifest (tests may damage them)."""
    models_src, manifest_src = pristine_standins
    models = tmp_path / "standins" / "models"
    shutil.copytree(models_src, models)
    manifest = shutil.copy(manifest_src, tmp_path / "standins" / manifest_src.name)
    return models, {"PDAC_LN_MODEL_MANIFEST": str(manifest)}


@pytest.fixture()
def existing_output(tmp_path) -> Path:
    out = tmp_path / "existing_output"
    out.mkdir()
    (out / "previous_result.json").write_text('{"kept": true}')
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_setting_in_app_yaml(tmp_path, standins, tiny_study_dir, existing_output):
    models, env = standins
    doc = yaml.safe_load((ROOT / "app.yaml").read_text())
    doc["ln_detection"]["probability_threshold"] = 1.7
    bad = tmp_path / "app.yaml"
    bad.write_text(yaml.safe_dump(doc))
    before = _snapshot(existing_output)
    done = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(existing_output), "-m", str(models)],
                   env={**env, "PDAC_LN_CONFIG": str(bad)})
    assert done.returncode == 3, done.stderr[-2000:]
    line = last_error_line(done)
    assert line.startswith("ERROR: bad configuration") and "ln_detection.probability_threshold" in line
    assert _snapshot(existing_output) == before
    assert "stage 'study_loader'" not in done.stderr, "no work may start after a bad setting"


def test_corrupted_model_file(tmp_path, standins, tiny_study_dir):
    models, env = standins
    victim = sorted(models.glob("*/model.ts"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x5A
    victim.write_bytes(bytes(data))
    out = tmp_path / "new_output"
    done = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(out), "-m", str(models)], env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    line = last_error_line(done)
    assert "SHA-256 mismatch" in line and victim.parent.name in line
    assert not out.exists(), "the output folder created for the run must be removed again"
    assert "stage 'study_loader'" not in done.stderr


def test_missing_and_extra_model(tmp_path, standins, tiny_study_dir):
    models, env = standins
    extra = models / "unlisted_model"
    shutil.copytree(sorted(p for p in models.iterdir())[0], extra)
    done = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(tmp_path / "o1"), "-m", str(models)], env=env)
    assert done.returncode == 3 and "not listed in model_manifest.json: unlisted_model" in last_error_line(done)
    shutil.rmtree(extra)
    shutil.rmtree(sorted(p for p in models.iterdir())[0])
    done = run_app(["-i", str(tiny_study_dir / "dicom"), "-o", str(tmp_path / "o2"), "-m", str(models)], env=env)
    assert done.returncode == 3 and "missing from" in last_error_line(done)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_input_folder_that_does_not_exist(tmp_path, standins):
    models, env = standins
    out = tmp_path / "out"
    done = run_app(["-o", str(out), "-m", str(models)],
                   env={**env, "HOLOSCAN_INPUT_PATH": str(tmp_path / "no_such_folder")})
    assert done.returncode == 3
    assert last_error_line(done) == f"ERROR: input not found: {tmp_path / 'no_such_folder'}"
    assert not out.exists()


def test_input_folder_without_dicom(tmp_path, standins, existing_output):
    """A readable folder that holds no DICOM: the loader stops the graph with a clear error."""
    models, env = standins
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not DICOM")
    (junk / "scan.dcm").write_bytes(b"\x00" * 300)
    before = _snapshot(existing_output)
    done = run_app(["-i", str(junk), "-o", str(existing_output), "-m", str(models)], env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    line = last_error_line(done)
    assert line.startswith("ERROR: DicomInputError") and str(junk) in line
    assert _snapshot(existing_output) == before


def test_missing_arterial_phase(tmp_path, standins, tiny_study_dir, existing_output):
    """Only the venous series: with the default policy the run stops naming the missing phase."""
    models, env = standins
    venous_only = tmp_path / "venous_only"
    shutil.copytree(tiny_study_dir / "dicom" / "venous", venous_only / "venous")
    before = _snapshot(existing_output)
    done = run_app(["-i", str(venous_only), "-o", str(existing_output), "-m", str(models)], env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    line = last_error_line(done)
    assert line.startswith("ERROR: PhaseSelectionError") and "arterial" in line.lower()
    assert _snapshot(existing_output) == before
    assert "run FAILED" in done.stderr
