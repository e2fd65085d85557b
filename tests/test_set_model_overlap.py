"""scripts/set_model_overlap.py: changes only the overlap the model runs with, and records the edit."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import set_model_overlap  # noqa: E402
from app_support import make_standin_models  # noqa: E402
from lnmet.inference import SegmentationModel  # noqa: E402
from lnmet.model_io import load_model, sha256_file  # noqa: E402


def test_overlap_is_set_weights_kept_and_edit_recorded(tmp_path):
    models, _ = make_standin_models(tmp_path, ["organ_seg"])
    path = models / "organ_seg" / "model.ts"
    before_module, before_meta = load_model(path)
    before_sha = sha256_file(path)
    assert set_model_overlap.main(["0.3", str(path)]) == 0
    module, meta = load_model(path)
    assert sha256_file(path) != before_sha
    assert meta["inference"]["overlap"] == 0.3 and SegmentationModel.load(path, "cpu").overlap == 0.3
    assert meta["edits"][-1]["what"] == f"inference.overlap {before_meta.get('inference', {}).get('overlap')} -> 0.3"
    assert {k: v for k, v in meta.items() if k not in ("inference", "edits")} == \
        {k: v for k, v in before_meta.items() if k not in ("inference", "edits")}
    for a, b in zip(before_module.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)
    # setting the same value again changes nothing
    sha = sha256_file(path)
    set_model_overlap.main(["0.3", str(path)])
    assert sha256_file(path) == sha
    with pytest.raises(SystemExit):
        set_model_overlap.main(["1.5", str(path)])
