"""Start-up checks without running the graph: model manifest, config discovery, input/output, timing."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import yaml

from app import startup
from app_support import make_standin_models
from lnmet import timing
from lnmet.model_manifest import ModelIntegrityError, build_manifest, read_model_metadata, verify_models

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def standins(tmp_path):
    return make_standin_models(tmp_path)


# --- model manifest ----------------------------------------------------------------------------

def test_manifest_lists_every_model_with_checksum(standins):
    models, manifest = standins
    doc = json.loads(manifest.read_text())
    assert [e["name"] for e in doc["models"]] == ["standin_a", "standin_b"]
    for e in doc["models"]:
        assert e["file"] == f"{e['name']}/model.ts"
        assert len(e["sha256"]) == 64 and e["trained_on"] and e["version"] == "0.0.1"
    infos = verify_models(models, manifest)
    assert set(infos) == {"standin_a", "standin_b"}
    assert infos["standin_a"].metadata["synthetic_training_data"] is True


def test_corrupted_model_is_refused(standins):
    models, manifest = standins
    path = models / "standin_b" / "model.ts"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"SHA-256 mismatch for model 'standin_b'"):
        verify_models(models, manifest)


def test_missing_model_is_refused(standins):
    models, manifest = standins
    shutil.rmtree(models / "standin_a")
    with pytest.raises(ModelIntegrityError, match=r"missing from .*: standin_a"):
        verify_models(models, manifest)


def test_extra_model_is_refused(standins):
    models, manifest = standins
    shutil.copytree(models / "standin_a", models / "intruder")
    with pytest.raises(ModelIntegrityError, match=r"not listed in model_manifest.json: intruder"):
        verify_models(models, manifest)


def test_named_model_layout_is_enforced(standins):
    models, manifest = standins
    (models / "standin_a" / "notes.txt").write_text("x")
    with pytest.raises(ModelIntegrityError, match=r"exactly one model file, found 2"):
        verify_models(models, manifest)
    (models / "standin_a" / "notes.txt").unlink()
    (models / "loose.ts").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="loose file"):
        verify_models(models, manifest)


def test_renamed_model_file_is_refused(standins):
    models, manifest = standins
    (models / "standin_a" / "model.ts").rename(models / "standin_a" / "other.ts")
    with pytest.raises(ModelIntegrityError, match="manifest lists 'standin_a/model.ts'"):
        verify_models(models, manifest)


def test_required_model_must_be_listed(standins):
    models, manifest = standins
    with pytest.raises(ModelIntegrityError, match="needs model.* ln_segmentation"):
        verify_models(models, manifest, required=("standin_a", "ln_segmentation"))


def test_metadata_is_read_without_torch_and_not_a_zip_is_refused(standins, tmp_path):
    models, _ = standins
    assert read_model_metadata(models / "standin_a" / "model.ts")["name"] == "standin_a"
    junk = tmp_path / "junk" / "model.ts"
    junk.parent.mkdir()
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelIntegrityError, match="not a readable TorchScript"):
        read_model_metadata(junk)


def test_build_manifest_checks_folder_name_against_metadata(standins):
    models, _ = standins
    (models / "standin_a").rename(models / "renamed")
    with pytest.raises(ModelIntegrityError, match="does not match its folder 'renamed'"):
        build_manifest(models)


def test_shipped_manifest_matches_bundled_models():
    """The committed model_manifest.json describes exactly the files in models/."""
    manifest = ROOT / "model_manifest.json"
    if not manifest.exists() and not any(p.is_file() for p in (ROOT / "models").rglob("*")):
        pytest.skip("no bundled models yet")
    infos = verify_models(ROOT / "models", manifest)
    assert infos, "model_manifest.json lists no model"
    for info in infos.values():
        assert info.metadata.get("synthetic_training_data") is True
        assert "synthetic" in info.trained_on.lower()


# --- settings discovery ---------------------------------------------------------------------------

def test_config_discovery_order(tmp_path, monkeypatch):
    monkeypatch.delenv("PDAC_LN_CONFIG", raising=False)
    monkeypatch.delenv("HOLOSCAN_CONFIG_PATH", raising=False)
    assert startup.find_config(tmp_path) == tmp_path / "app.yaml"
    packaged = tmp_path / "packaged.yaml"
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(packaged))
    assert startup.find_config(tmp_path) == tmp_path / "app.yaml", "a missing packaged config is ignored"
    packaged.write_text("x")
    assert startup.find_config(tmp_path) == packaged
    monkeypatch.setenv("PDAC_LN_CONFIG", str(tmp_path / "explicit.yaml"))
    assert startup.find_config(tmp_path) == tmp_path / "explicit.yaml"


def test_bad_setting_stops_with_its_name(tmp_path, monkeypatch):
    doc = yaml.safe_load((ROOT / "app.yaml").read_text())
    doc["attention"]["classes"]["pancreas"]["d_min"] = "near"
    bad = tmp_path / "app.yaml"
    bad.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PDAC_LN_CONFIG", str(bad))
    with pytest.raises(startup.StartupError, match=r"attention\.classes\.pancreas\.d_min"):
        startup.load_checked_settings()


def test_settings_path_is_exported_for_operators(tmp_path, monkeypatch):
    cfg = tmp_path / "app.yaml"
    shutil.copy(ROOT / "app.yaml", cfg)
    monkeypatch.delenv("PDAC_LN_CONFIG", raising=False)
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(cfg))
    _, path = startup.load_checked_settings(ROOT)
    assert path == cfg
    import os
    assert os.environ["PDAC_LN_CONFIG"] == str(cfg.resolve())


# --- input / output / device --------------------------------------------------------------------

def test_input_checks(tmp_path):
    with pytest.raises(startup.StartupError, match="input not found"):
        startup.check_input(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(startup.StartupError, match="holds no files"):
        startup.check_input(tmp_path / "empty")
    (tmp_path / "empty" / "sub" / "a.dcm").write_bytes(b"x")
    startup.check_input(tmp_path / "empty")


def test_output_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(startup.StartupError, match="not a folder"):
        startup.check_output(tmp_path / "file")
    startup.check_output(tmp_path / "new_folder")


def test_device_selection(monkeypatch):
    import torch

    monkeypatch.delenv("PDAC_LN_DEVICE", raising=False)
    assert startup.select_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("PDAC_LN_DEVICE", "cpu")
    assert startup.select_device() == "cpu"
    monkeypatch.setenv("PDAC_LN_DEVICE", "tpu")
    with pytest.raises(startup.StartupError, match="PDAC_LN_DEVICE"):
        startup.select_device()


# --- timing ---------------------------------------------------------------------------------------

def test_stage_timing_logs_records_and_survives_errors(caplog):
    timer = timing.StageTimer()
    with caplog.at_level(logging.INFO):
        with timing.stage("outer", timer=timer) as rec:
            time.sleep(0.05)
            with timing.stage("inner", parent="outer", timer=timer):
                time.sleep(0.02)
        with pytest.raises(ValueError):
            with timing.stage("broken", timer=timer):
                raise ValueError("x")
    assert rec.seconds >= 0.05
    names = [r.name for r in timer.records]
    assert names == ["outer", "inner", "broken"]
    assert [r.ok for r in timer.records] == [True, True, False]
    assert "stage 'outer' done in" in caplog.text and "stage 'broken' failed after" in caplog.text
    lines = timer.summary_lines(total_seconds=1.0)
    assert lines[0].strip().startswith("outer") and lines[1].startswith("    inner")
    assert "FAILED" in lines[2] and lines[-1].strip().startswith("total")


def test_timed_decorator_records_in_global_timer():
    @timing.timed("decorated step")
    def work(x):
        return x * 2

    before = timing.TIMER.total("decorated step")
    assert work(21) == 42
    assert len([r for r in timing.TIMER.records if r.name == "decorated step"]) >= 1
    assert timing.TIMER.total("decorated step") >= before
