"""The shared segmentation training command on a tiny generated dataset, its parts, and the
segmentation operators running the exported files in a Holoscan graph."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.losses import DiceLoss

from lnmet.labels import ORGAN_BY_LABEL
from lnmet.model_io import load_model, sha256_file
from training.datasets import TASKS, CaseData, list_cases, load_cases, read_dataset_json, split_cases
from training.losses import CETverskyLoss, deep_supervision_weights, paper_tversky_to_monai
from training.sampling import PatchSampler, build_augmentation
from training.train_segmentation import main as train_main
from training.train_segmentation import poly_lr

SMALL = ["--spacing", "3", "3", "3", "--patch-size", "32", "32", "16", "--filters", "4", "8", "16",
         "--threads", "1", "--log-every", "5", "--val-overlap", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend badly (several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_nnunet(tmp_path_factory):
    """Three tiny generated studies exported in nnU-Net's raw layout (the generator's exporter)."""
    from synthetic.nnunet import export_nnunet

    out = tmp_path_factory.mktemp("nnunet")
    export_nnunet(out, range(0, 3), "tiny")
    return out


@pytest.fixture(scope="module")
def trained(tiny_nnunet, tmp_path_factory):
    """Organ, LN (attention), LN baseline and PDAC models trained for a few iterations."""
    root = tmp_path_factory.mktemp("trained")
    runs = {
        "organ_seg": ["--dataset", str(tiny_nnunet / "Dataset501_PancreasOrgans"), "--task", "organs",
                      "--iterations", "30", "--lr", "0.01"],
        "ln_seg": ["--dataset", str(tiny_nnunet / "Dataset502_PancreasLymphNodes"), "--task", "lymph_nodes",
                   "--iterations", "10", "--per-node-sampling"],
        "ln_seg_baseline": ["--dataset", str(tiny_nnunet / "Dataset502_PancreasLymphNodes"), "--task",
                            "lymph_nodes", "--no-attention", "--iterations", "4", "--val-fraction", "0"],
        "pdac_seg": ["--dataset", str(tiny_nnunet / "Dataset503_PancreasTumour"), "--task", "pdac",
                     "--iterations", "4", "--val-fraction", "0"],
    }
    summaries = {}
    for name, args in runs.items():
        extra = SMALL + ([] if "--val-fraction" in args else ["--val-fraction", "0.34"])
        summaries[name] = train_main(args + extra + ["--out", str(root / "models" / name / "model.ts"),
                                                     "--checkpoint", str(root / "ck" / f"{name}.pt")])
    return root, summaries


def test_organ_training_loss_falls_and_metadata(trained, tiny_nnunet):
    root, summaries = trained
    s = summaries["organ_seg"]
    losses = [h["loss"] for h in s["history"]]
    assert s["iterations"] == 30 and len(losses) == 6
    assert losses[-1] < losses[0] * 0.9, losses
    assert set(s["validation"]["dice"]) <= {c.key for c in ORGAN_BY_LABEL.values()} and s["validation"]["cases"] == 1
    _, meta = load_model(root / "models" / "organ_seg" / "model.ts")
    assert meta["name"] == "organ_seg" and meta["task"] == "organs" and meta["num_classes"] == 11
    assert meta["spacing_mm"] == [3.0, 3.0, 3.0] and meta["patch_size"] == [32, 32, 16]
    assert meta["architecture"]["filters"] == [4, 8, 16] and meta["architecture"]["attention"] is False
    assert meta["channel_names"] == ["CT_arterial", "CT_venous"] and len(meta["normalization"]) == 2
    assert meta["synthetic_training_data"] is True and "synthetic/" in meta["trained_on"]
    assert "seeds 0-2" in meta["trained_on"] and "2 training + 1 held-back validation cases" in meta["trained_on"]
    assert meta["training_command"].startswith("python -m training.train_segmentation ")
    assert "--task organs" in meta["training_command"]
    assert meta["training"]["loss"] == "dice_ce" and meta["training"]["iterations"] == 30


def test_lymph_node_models_attention_flags_and_sampling(trained):
    root, summaries = trained
    _, meta = load_model(root / "models" / "ln_seg" / "model.ts")
    _, base = load_model(root / "models" / "ln_seg_baseline" / "model.ts")
    assert meta["architecture"]["attention"] is True and meta["training"]["informative_negative_selection"] is True
    assert base["architecture"]["attention"] is False and base["training"]["informative_negative_selection"] is False
    assert meta["training"]["per_node_sampling"] is True and base["training"]["per_node_sampling"] is False
    # the baseline draws from the whole body, as nnU-Net does; only INS narrows it to the attended region
    assert meta["training"]["sample_region"] == "attended" and base["training"]["sample_region"] == "body"
    assert meta["training"]["loss"] == "ce_tversky" and meta["training"]["tversky_alpha_beta_paper_eq4"] == [0.5, 1.5]
    assert "instance_recall" in summaries["ln_seg"]["validation"]
    assert summaries["ln_seg"]["sampler"]["patches"] == 10 * 2
    # the metadata says how many patches held no attended voxel: none with INS
    assert meta["training"]["sampler"] == summaries["ln_seg"]["sampler"] and meta["training"]["sampler"]["uninformative"] == 0
    assert base["training"]["sampler"]["patches"] > 0 and "uninformative" in base["training"]["sampler"]


def test_resume_continues_from_the_checkpoint(tiny_nnunet, tmp_path):
    args = ["--dataset", str(tiny_nnunet / "Dataset503_PancreasTumour"), "--task", "pdac", "--val-fraction", "0",
            "--spacing", "3", "3", "3", "--patch-size", "32", "32", "16", "--filters", "4", "8", "16",
            "--threads", "1", "--log-every", "1", "--checkpoint", str(tmp_path / "ck.pt"),
            "--out", str(tmp_path / "m" / "model.ts")]
    first = train_main(args + ["--iterations", "3", "--lr", "0.004"])
    assert first["iterations"] == 3
    state = torch.load(tmp_path / "ck.pt", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3 and state["learning_rate"] == 0.004
    assert 0 < state["seconds"] <= first["seconds"]
    state["seconds"] = 1000.0  # as if the first leg had taken 1000 s: the total must carry it on
    torch.save(state, tmp_path / "ck.pt")
    t0 = time.perf_counter()
    second = train_main(args + ["--iterations", "5", "--resume"])
    leg = time.perf_counter() - t0
    assert second["iterations"] == 5
    assert [h["iteration"] for h in second["history"]] == [1, 2, 3, 4, 5]
    # without --lr the stretched schedule goes on from the run's own rate, not the preset's default
    assert [h["lr"] for h in second["history"][3:]] == pytest.approx([poly_lr(0.004, 3, 5), poly_lr(0.004, 4, 5)])
    assert load_model(second["model"])[1]["training"]["initial_lr"] == 0.004
    assert 1000.0 < second["seconds"] < 1000.0 + leg, "training time counts every leg"
    assert load_model(second["model"])[1]["training"]["seconds"] == round(second["seconds"], 1)


def test_a_resumed_training_is_the_unbroken_one(tiny_nnunet, tmp_path, monkeypatch):
    """Resumed from its checkpoint, a training draws the same patches, augmentations and domain
    randomisations as one that ran through: the protocol's multi-sitting runs stay comparable."""
    args = ["--dataset", str(tiny_nnunet / "Dataset502_PancreasLymphNodes"), "--task", "lymph_nodes",
            "--val-fraction", "0", "--randomise", "probability=1", "--checkpoint-every", "2", "--iterations", "4",
            *SMALL, "--log-every", "1"]
    real_save = torch.save

    def keep_iteration_2(obj, f, *a, **k):  # the checkpoint of iteration 2, as a run cut there leaves it
        real_save(obj, f, *a, **k)
        if isinstance(obj, dict) and obj.get("iteration") == 2:
            real_save(obj, tmp_path / "at2.pt")

    monkeypatch.setattr(torch, "save", keep_iteration_2)
    whole = train_main(args + ["--out", str(tmp_path / "a" / "model.ts"), "--checkpoint", str(tmp_path / "a.pt")])
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(tmp_path / "at2.pt", map_location="cpu", weights_only=False)
    assert state["augment"] is not None and state["randomiser_rng"] is not None

    def resume(name: str, checkpoint: dict) -> dict:
        real_save(checkpoint, tmp_path / f"{name}.pt")
        return train_main(args + ["--resume", "--out", str(tmp_path / name / "model.ts"),
                                  "--checkpoint", str(tmp_path / f"{name}.pt")])

    resumed = resume("b", state)
    assert resumed["randomiser"]["patches"] > 0  # the randomiser was at work in the resumed leg
    losses = [h["loss"] for h in whole["history"]]
    assert len(losses) == 4 and [h["loss"] for h in resumed["history"]] == pytest.approx(losses, abs=1e-6)
    a, b = load_model(whole["model"])[0].state_dict(), load_model(resumed["model"])[0].state_dict()
    for key, value in a.items():
        assert torch.allclose(value, b[key], atol=1e-6), key
    # a checkpoint without those states (as written before they were kept) replays the draws: it differs
    old = {k: v for k, v in state.items() if k not in ("augment", "randomiser_rng")}
    replayed = resume("c", old)
    assert [h["loss"] for h in replayed["history"]][2:] != pytest.approx(losses[2:], abs=1e-6)


def test_init_from_starts_from_a_models_weights(trained, tiny_nnunet, tmp_path):
    """Fine-tuning: the weights and normalisation of the given model, a fresh schedule, provenance kept;
    a model of another task or architecture is refused by name."""
    root, _ = trained
    source = root / "models" / "ln_seg" / "model.ts"
    src_module, src_meta = load_model(source)
    args = ["--dataset", str(tiny_nnunet / "Dataset502_PancreasLymphNodes"), "--task", "lymph_nodes",
            "--per-node-sampling", "--val-fraction", "0", "--tversky-alpha", "1", "--tversky-beta", "1"] + SMALL
    zero_lr = train_main(args + ["--iterations", "1", "--lr", "0", "--init-from", str(source),
                                 "--out", str(tmp_path / "a" / "model.ts"), "--checkpoint", str(tmp_path / "a.pt")])
    module, meta = load_model(zero_lr["model"])
    for key, value in src_module.state_dict().items():  # learning rate 0: the weights are the source's
        assert torch.equal(module.state_dict()[key], value), key
    assert meta["normalization"] == src_meta["normalization"]
    assert meta["training"]["initialised_from"] == {"model": "ln_seg", "version": src_meta["version"],
                                                    "sha256": sha256_file(source)}
    assert meta["training"]["tversky_alpha_beta_paper_eq4"] == [1.0, 1.0]
    assert "--init-from" in meta["training_command"]
    assert meta["version"] == f"{src_meta['version']}+finetuned"  # never mistaken for a trained release
    tuned = train_main(args + ["--iterations", "2", "--init-from", str(source),
                               "--out", str(tmp_path / "b" / "model.ts"), "--checkpoint", str(tmp_path / "b.pt")])
    assert [h["iteration"] for h in tuned["history"]] == [2]  # a new schedule, not the source's iterations
    resumed = train_main(args + ["--iterations", "3", "--resume", "--out", str(tmp_path / "b2" / "model.ts"),
                                 "--checkpoint", str(tmp_path / "b.pt")])
    assert resumed["iterations"] == 3  # a second leg of the fine-tuning still names its source
    assert load_model(resumed["model"])[1]["training"]["initialised_from"] == meta["training"]["initialised_from"]
    assert load_model(resumed["model"])[1]["version"] == meta["version"]
    changed = load_model(tuned["model"])[0].state_dict()
    assert any(not torch.equal(changed[k], v) for k, v in src_module.state_dict().items())
    with pytest.raises(ValueError, match="pdac model"):
        train_main(args + ["--iterations", "1", "--init-from", str(root / "models" / "pdac_seg" / "model.ts"),
                           "--out", str(tmp_path / "c" / "model.ts"), "--checkpoint", str(tmp_path / "c.pt")])
    with pytest.raises(ValueError, match="architecture"):
        f = SMALL.index("--filters")
        narrower = SMALL[:f] + ["--filters", "4", "8", "8"] + SMALL[f + 4:]
        train_main(args[:-len(SMALL)] + narrower + ["--iterations", "1", "--init-from", str(source),
                      "--out", str(tmp_path / "d" / "model.ts"), "--checkpoint", str(tmp_path / "d.pt")])


def _source_operator(registered):
    from monai.deploy.core import Operator

    class Source(Operator):
        def setup(self, spec):
            spec.output("registered_phases")

        def compute(self, op_input, op_output, context):
            op_output.emit(registered, "registered_phases")

    return Source


def _sink_operator(ports, store):
    from monai.deploy.core import Operator

    class Sink(Operator):
        def setup(self, spec):
            for p in ports:
                spec.input(p)

        def compute(self, op_input, op_output, context):
            for p in ports:
                store[p] = op_input.receive(p)

    return Sink


def test_exported_models_run_in_the_operators(trained, tiny_study):
    """Organ -> attention -> LN and PDAC operators in a Holoscan graph, on a generated study."""
    from holoscan.conditions import CountCondition
    from monai.deploy.core import Application

    from evaluation.organ_segmentation import registered_from_study
    from operators.attention_map import AttentionMapOperator
    from operators.ln_segmentation import LNSegmentationOperator
    from operators.organ_segmentation import OrganSegmentationOperator
    from operators.pdac_segmentation import PDACSegmentationOperator

    root, _ = trained
    models = root / "models"
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0), "perfect")
    store: dict = {}
    ports = ["organs", "organs_working", "attention", "ln_probability", "pdac", "pdac_working"]

    class App(Application):
        def compose(self):
            src = _source_operator(registered)(self, CountCondition(self, 1), name="src")
            organs = OrganSegmentationOperator(self, model_path=models / "organ_seg" / "model.ts", name="organs")
            att = AttentionMapOperator(self, name="attention")
            ln = LNSegmentationOperator(self, model_path=models, name="ln")  # folder: <models>/ln_seg/model.ts
            pdac = PDACSegmentationOperator(self, model_path=models / "pdac_seg" / "model.ts", name="pdac")
            sink = _sink_operator(ports, store)(self, name="sink")
            self.add_flow(src, organs, {("registered_phases", "registered_phases")})
            self.add_flow(src, ln, {("registered_phases", "registered_phases")})
            self.add_flow(src, pdac, {("registered_phases", "registered_phases")})
            self.add_flow(organs, pdac, {("organs_working", "organs_working")})
            self.add_flow(organs, att, {("organs_working", "organs_working")})
            self.add_flow(att, ln, {("attention", "attention")})
            self.add_flow(organs, sink, {("organs", "organs"), ("organs_working", "organs_working")})
            self.add_flow(att, sink, {("attention", "attention")})
            self.add_flow(ln, sink, {("ln_probability", "ln_probability")})
            self.add_flow(pdac, sink, {("pdac", "pdac"), ("pdac_working", "pdac_working")})

    App().run()
    assert set(store) == set(ports)
    ref = tiny_study.venous
    for name in ("organs", "pdac"):
        img = store[name]
        assert img.GetSize() == ref.GetSize() and img.GetPixelID() == sitk.sitkUInt8
        assert np.allclose(img.GetSpacing(), ref.GetSpacing()) and np.allclose(img.GetOrigin(), ref.GetOrigin())
    organs = sitk.GetArrayFromImage(store["organs"])
    assert set(np.unique(organs)) <= {0} | set(ORGAN_BY_LABEL) and (organs > 0).any()
    prob = sitk.GetArrayFromImage(store["ln_probability"])
    att = sitk.GetArrayFromImage(store["attention"])
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
    assert prob.shape == att.shape == sitk.GetArrayFromImage(store["organs_working"]).shape
    assert np.ptp(prob[att == 0]) < 1e-5  # zero attention: the known constant


def test_sampler_foreground_and_informative_negative_selection(tiny_nnunet):
    from lnmet.config import load_settings

    ds = tiny_nnunet / "Dataset502_PancreasLymphNodes"
    meta = read_dataset_json(ds)
    cases = load_cases(ds, list_cases(ds, meta), meta, TASKS["lymph_nodes"], (3.0, 3.0, 3.0),
                       load_settings().attention)
    assert all(c.attention is not None and c.instances is not None for c in cases)
    norm = [{"clip_hu": [-200, 300], "mean": 50.0, "std": 100.0}] * 2
    ins = PatchSampler(cases, (8, 16, 16), norm, foreground_fraction=0.33, informative_only=True, seed=1)
    plain = PatchSampler(cases, (8, 16, 16), norm, foreground_fraction=0.33, informative_only=False, seed=1)
    ins_empty = plain_empty = 0
    for _ in range(30):
        for i, s in enumerate(ins.batch(3)):
            assert s["image"].shape == (2, 8, 16, 16) and s["label"].shape == s["attention"].shape == (1, 8, 16, 16)
            assert s["image"].min() >= -2.5 and s["image"].max() <= 2.5  # normalised with the clip
            ins_empty += int(s["attention"].max() == 0)
        b = plain.batch(3)
        assert b[2]["label"].max() == 1  # nnU-Net: the last of 3 samples is forced to hold foreground
        plain_empty += sum(int(s["attention"].max() == 0) for s in b)
    assert ins_empty == 0 and plain_empty > 0
    assert ins.stats["uninformative"] == 0 and plain.stats["uninformative"] == plain_empty  # counted as drawn
    # single-phase exposure: the venous patch in the arterial channel too
    single = PatchSampler(cases, (8, 16, 16), norm, single_phase_fraction=1.0, phase_channels=(0, 1), seed=2)
    s = single.batch(1)[0]
    np.testing.assert_array_equal(s["image"][0], s["image"][1])
    assert not np.array_equal(plain.batch(1)[0]["image"][0], plain.batch(1)[0]["image"][1])


def test_cases_without_ins_keep_the_whole_body(tiny_nnunet, monkeypatch):
    """The attended crop is itself a selection of informative patches: the ablation's networks without
    INS must get the body box, of which the crop is a part, or "w/o INS" trains exactly like "ours"."""
    from lnmet.config import load_settings

    # the tiny studies fit inside the attended region's 60 mm margin; without the margin the crop is
    # the attended region's own box, which leaves body out
    monkeypatch.setattr("training.datasets.ATTENTION_MARGIN_MM", 0.0)

    ds = tiny_nnunet / "Dataset502_PancreasLymphNodes"
    meta = read_dataset_json(ds)
    ids = list_cases(ds, meta)
    args = (ds, ids, meta, TASKS["lymph_nodes"], (1.5, 1.5, 1.5), load_settings().attention)
    cropped, body = load_cases(*args), load_cases(*args, crop_to_attention=False)
    outside = 0
    for c, b in zip(cropped, body):
        assert all(n <= m for n, m in zip(c.image.shape, b.image.shape))
        assert int((c.attention > 0).sum()) == int((b.attention > 0).sum())  # every attended voxel is kept
        outside += int(b.attention.size - c.attention.size)
    assert outside > 0  # the body holds voxels the crop leaves out


def test_sample_region_is_only_for_the_node_task(tiny_nnunet, tmp_path):
    with pytest.raises(SystemExit):
        train_main(["--dataset", str(tiny_nnunet / "Dataset501_PancreasOrgans"), "--task", "organs",
                    "--sample-region", "body", "--out", str(tmp_path / "m.ts")])


def test_per_node_sampling_gives_small_nodes_their_share():
    """Foreground patches centred per node: each node of a case gets about the same number of patches,
    where drawing by voxel gives them in proportion to their volume."""
    inst = np.zeros((40, 60, 60), np.uint16)
    inst[5:25, 5:25, 5:25] = 1  # 8000 voxels
    inst[30:32, 50:52, 50:52] = 2  # 8 voxels
    label = (inst > 0).astype(np.uint8)
    case = CaseData("c", np.zeros((2,) + inst.shape, np.int16), label, (1.5, 1.5, 1.5), instances=inst,
                    class_coords={1: np.argwhere(label > 0)})
    norm = [{"clip_hu": [-200, 300], "mean": 0.0, "std": 1.0}] * 2

    def share_at_small_node(per_instance: bool) -> float:
        sampler = PatchSampler([case], (8, 8, 8), norm, per_instance=per_instance, seed=3)
        hits = 0
        for _ in range(400):
            start = np.array(sampler.choose_start(case, force_foreground=True))
            lo, hi = np.maximum(start, 0), start + 8
            hits += int((inst[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == 2).any())
        return hits / 400

    assert share_at_small_node(False) < 0.02
    assert 0.4 < share_at_small_node(True) < 0.6
    with pytest.raises(ValueError, match="instance map"):
        PatchSampler([CaseData("d", case.image, label, (1.5, 1.5, 1.5))], (8, 8, 8), norm, per_instance=True)


def test_augmentation_keeps_labels_and_shapes():
    aug = build_augmentation(with_attention=True, seed=0)
    rng = np.random.default_rng(0)
    label = np.zeros((1, 16, 24, 24), np.float32)
    label[0, 4:12, 6:18, 6:18] = 1
    for _ in range(10):
        s = aug({"image": rng.normal(size=(2, 16, 24, 24)).astype(np.float32), "label": label.copy(),
                 "attention": np.ones((1, 16, 24, 24), np.float32)})
        assert tuple(s["image"].shape) == (2, 16, 24, 24) and tuple(s["label"].shape) == (1, 16, 24, 24)
        assert set(np.unique(np.asarray(s["label"]))) <= {0.0, 1.0}


def test_tversky_follows_the_paper_convention():
    assert paper_tversky_to_monai(0.5, 1.5) == (0.25, 0.75)
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2, :, :] = 1  # 32 foreground voxels
    big = 20.0
    miss = torch.zeros(1, 2, 4, 4, 4)  # predicts half the foreground: 16 FN
    miss[:, 0] = big
    miss[:, 1, :1] = 2 * big
    extra = torch.zeros(1, 2, 4, 4, 4)  # predicts all foreground + 16 background voxels: 16 FP
    extra[:, 0] = big
    extra[:, 1, :3] = 2 * big
    paper = CETverskyLoss(0.5, 1.5)
    # Eq. 4: FN weighs more than FP (beta 1.5 > alpha 0.5)
    assert paper.tversky(miss, target) > paper.tversky(extra, target) > 0
    np.testing.assert_allclose(float(paper.tversky(miss, target)), 1 - 2 * 16 / (2 * 16 + 1.5 * 16), atol=1e-3)
    np.testing.assert_allclose(float(paper.tversky(extra, target)), 1 - 2 * 32 / (2 * 32 + 0.5 * 16), atol=1e-3)
    # alpha = beta = 1 in the paper's form is the Dice loss
    dice_like = CETverskyLoss(1.0, 1.0)
    logits = torch.randn(2, 2, 4, 4, 4)
    tgt = (torch.rand(2, 1, 4, 4, 4) > 0.7).float()
    dl = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    ce = torch.nn.functional.cross_entropy(logits, tgt[:, 0].long())
    torch.testing.assert_close(dice_like(logits, tgt), ce + dl(logits, tgt))


def test_deep_supervision_weights_and_split():
    w = deep_supervision_weights(4)
    np.testing.assert_allclose(w, np.array([1, 0.5, 0.25, 0]) / 1.75)
    assert deep_supervision_weights(1) == [1.0]
    train, val = split_cases([f"SYN{i:06d}" for i in range(10)], 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and len(train) == 8
    assert split_cases([f"SYN{i:06d}" for i in range(10)], 0.2, seed=0) == (train, val)


def test_organ_evaluation_on_a_generated_study(trained, tiny_study):
    """The evaluation script's per-study figures: Dice per class on the reference grid and the LN
    attention coverage (all ground-truth LN voxels get attention with the ground-truth organs)."""
    from evaluation.organ_segmentation import evaluate_study, summarize
    from lnmet.inference import SegmentationModel

    root, _ = trained
    model = SegmentationModel.load(root / "models" / "organ_seg" / "model.ts", "cpu")
    r = evaluate_study(tiny_study, model, "perfect")
    assert set(r["dice"]) == {c.key for c in ORGAN_BY_LABEL.values()}
    assert all(np.isnan(v) or 0 <= v <= 1 for v in r["dice"].values())
    assert r["ln_voxels"] > 0 and r["coverage_gt"] == 1.0 and 0 <= r["coverage_pred"] <= 1
    s = summarize([r, r])
    assert s["studies"] == 2 and s["coverage_gt"] == 1.0 and s["coverage_goal_met"] == (r["coverage_pred"] >= 0.9)
