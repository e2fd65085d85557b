"""app.yaml validation (lnmet.config): the shipped file is valid, every bad setting is named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from lnmet.config import SettingsError, load_settings, parse_settings
from lnmet.labels import ORGAN_CLASSES

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "app.yaml").read_text())


def _with(path: str, value: Any) -> dict:
    """A copy of app.yaml with one setting replaced (``value`` None with ``path`` ending in '!' deletes it)."""
    doc = copy.deepcopy(RAW)
    keys = path.rstrip("!").split(".")
    node = doc
    for k in keys[:-1]:
        node = node[k]
    if path.endswith("!"):
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


def test_shipped_app_yaml_is_valid():
    s = load_settings(ROOT / "app.yaml")
    assert s.app_version == RAW["application"]["version"]
    assert [c.key for c in s.attention.classes] == [c.key for c in ORGAN_CLASSES]
    assert s.resources is not None and s.resources.memory_bytes > 0
    assert s.resources.gpu == RAW["resources"]["gpu"]


def test_density_check_is_optional():
    """The shipped file checks node density; null or a missing key switches the check off."""
    assert parse_settings(RAW).ln_detection.min_density_hu == 0.0
    assert parse_settings(_with("ln_detection.min_density_hu", None)).ln_detection.min_density_hu is None
    assert parse_settings(_with("ln_detection.min_density_hu!", None)).ln_detection.min_density_hu is None


def test_fat_rim_trim_is_optional():
    """The shipped file trims each node's partial-volume fat rim; null or a missing key keeps it."""
    assert parse_settings(RAW).ln_detection.rim_fat_hu == RAW["ln_detection"]["rim_fat_hu"] is not None
    assert parse_settings(_with("ln_detection.rim_fat_hu", None)).ln_detection.rim_fat_hu is None
    assert parse_settings(_with("ln_detection.rim_fat_hu!", None)).ln_detection.rim_fat_hu is None


def test_min_voxels_defaults_to_one_and_must_be_a_positive_integer():
    """A missing ``min_voxels`` keeps every node of the volume filter; 0 or a fraction is refused."""
    assert parse_settings(RAW).ln_detection.min_voxels == RAW["ln_detection"].get("min_voxels", 1)
    assert parse_settings(_with("ln_detection.min_voxels!", None)).ln_detection.min_voxels == 1
    assert parse_settings(_with("ln_detection.min_voxels", 3)).ln_detection.min_voxels == 3
    for bad in (0, 2.5, "two"):
        with pytest.raises(SettingsError, match="ln_detection.min_voxels"):
            parse_settings(_with("ln_detection.min_voxels", bad))


def test_attention_table7_values():
    """Table 7 of the paper, as shipped."""
    table7 = {"spleen": (0, 16), "esophagus": (0, 25), "stomach": (-2, 18), "aorta": (0, 28),
              "pancreas": (-5, 20), "duodenum": (-5, 22), "sma": (-1, 20), "tc_sa": (-2, 18),
              "lga": (0, 21), "cha_pha": (0, 20)}
    s = parse_settings(RAW)
    assert {c.key: (c.d_min, c.d_max) for c in s.attention.classes} == table7
    assert s.attention.ramp_mm == 3.0


@pytest.mark.parametrize("path, value, named", [
    ("application.version", 0.1, "application.version"),          # unquoted: a float, not semver
    ("application.version", "1.0", "application.version"),
    ("application.title", "", "application.title"),
    ("application.input-formats", "DICOM", "application.input-formats"),
    ("application.output-formats!", None, "application.output-formats"),
    ("resources.memory", "lots", "resources.memory"),
    ("resources.gpuMemory!", None, "resources.gpuMemory"),
    ("resources.cpu", 0, "resources.cpu"),
    ("resources.gpu", 0.5, "resources.gpu"),
    ("resources!", None, "resources"),
    ("series_selection.min_slices", 1, "series_selection.min_slices"),
    ("phase_policy.missing_arterial", "guess", "phase_policy.missing_arterial"),
    ("registration.sampling_fraction", 2.0, "registration.sampling_fraction"),
    ("attention.classes.spleen.d_max", -10, "attention.classes.spleen.d_max"),
    ("attention.classes.aorta.label", 7, "attention.classes.aorta.label"),
    ("ln_detection.probability_threshold", 1.5, "ln_detection.probability_threshold"),
    ("ln_detection.min_density_hu", "fat", "ln_detection.min_density_hu"),
    ("ln_detection.rim_fat_hu", "fat", "ln_detection.rim_fat_hu"),
    ("ln_detection.min_voxels", -1, "ln_detection.min_voxels"),
    ("pdac_segmentation.min_density_hu", "fluid", "pdac_segmentation.min_density_hu"),
    ("patient_classifier.threshold", "high", "patient_classifier.threshold"),
    ("outputs.pdf", "yes", "outputs.pdf"),
])
def test_bad_setting_is_named(path, value, named):
    with pytest.raises(SettingsError) as err:
        parse_settings(_with(path, value))
    assert named in str(err.value)


def test_bad_regex_rule_is_named():
    doc = copy.deepcopy(RAW)
    doc["series_selection"]["rules"]["arterial"] = [{"SeriesDescription": "(unclosed"}]
    with pytest.raises(SettingsError, match=r"series_selection\.rules\.arterial\[0\]\.SeriesDescription"):
        parse_settings(doc)


@pytest.mark.parametrize("memory, expected", [("8Gi", 8 * 2**30), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9)])
def test_memory_quantities(memory, expected):
    assert parse_settings(_with("resources.memory", memory)).resources.memory_bytes == expected


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("application: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)


def test_env_var_selects_the_file(tmp_path, monkeypatch):
    alt = tmp_path / "alt.yaml"
    alt.write_text(yaml.safe_dump(_with("ln_detection.min_volume_mm3", 42.0)))
    monkeypatch.setenv("PDAC_LN_CONFIG", str(alt))
    assert load_settings().ln_detection.min_volume_mm3 == 42.0
