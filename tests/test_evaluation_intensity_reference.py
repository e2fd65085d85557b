"""evaluation/intensity_reference.py: the gate's intensity measure on exported training studies."""

from __future__ import annotations

import json

import pytest

from evaluation import intensity_reference


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from synthetic.nnunet import export_nnunet

    out = tmp_path_factory.mktemp("nnunet_intensity")
    export_nnunet(out, range(0, 2), "tiny")
    return out


def test_shares_of_every_model_on_training_studies(exported, tmp_path, capsys):
    out = tmp_path / "ref.json"
    assert intensity_reference.main(["--data", str(exported), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["studies"]) == {"SYN000000", "SYN000001"}
    for shares in doc["studies"].values():
        # the organ, node and tumour models each have a region on a generated study with its tumour
        assert {k.split()[0] for k in shares} >= {"organ_seg", "ln_seg", "pdac_seg"}
        assert all(0.0 < v <= 1.0 for v in shares.values())
    worst = min(min(s.values()) for s in doc["studies"].values())
    assert doc["summary"]["check_value"]["min"] == pytest.approx(worst)
    assert "check value (smallest share)" in capsys.readouterr().out


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / intensity_reference.ORGANS / "imagesTr").mkdir(parents=True)
    with pytest.raises(SystemExit):
        intensity_reference.main(["--data", str(tmp_path)])
