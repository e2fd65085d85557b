"""Patient-level prediction on a generated study: mean of the 9 patch probabilities with the LN
volume, the model's or app.yaml's threshold, the nodes-only fallback with its statement when no
tumour is found, the exported nodes-only rule, the AnalysisResults handed to the builders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from evaluation.organ_segmentation import registered_from_study
from lnmet.config import load_settings
from lnmet.model_io import save_model
from lnmet.networks.patient_classifier import (NodesOnlyRule, PatientClassifier, PatientModel, nodes_only_score,
                                               normalize_patches)
from lnmet.types import LNFindings, LymphNodeFinding, TumourSelection
from operators.patient_classifier import NO_TUMOUR_STATEMENT, assemble_results, classify_patient, mark_borderline

NORM = [{"channel": "CT_venous", "clip_hu": [-200.0, 300.0], "mean": 60.0, "std": 80.0}]


def patient_metadata(mode: str, architecture: dict, threshold: float = 0.4, nodes_t: float = 300.0) -> dict:
    return {"name": "patient_cls", "version": "0.0.1", "mode": mode, "architecture": architecture,
            "spacing_mm": [3.0, 3.0], "patch_size": [32, 32], "in_channels": 1, "channel_names": ["CT_venous"],
            "normalization": NORM, "classes": {"negative": 0, "positive": 1}, "num_classes": 2,
            "decision_threshold": threshold, "nodes_only_threshold_mm3": nodes_t, "trained_on": "unit test",
            "training_command": "tests", "synthetic_training_data": True}


def write_patient_model(path, mode="combined", seed=0) -> PatientClassifier:
    torch.manual_seed(seed)
    net = PatientClassifier(1, (4, 8, 16, 32), mode=mode).eval()
    with torch.no_grad():  # a volume branch with a visible effect in eval mode
        net.volume_branch[0].running_var.fill_(1e4)
        net.volume_branch[1].weight.normal_(0, 1.0)
    example = (torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1))
    save_model(net, path, patient_metadata(mode, net.architecture()), example)
    return net


def _node(index: int, volume: float, positive: bool) -> LymphNodeFinding:
    return LymphNodeFinding(index=index, tracking_uid=f"1.2.3.{index}", volume_mm3=volume, short_axis_mm=5.0,
                            long_axis_mm=8.0, mean_hu_venous=40.0, centroid_mm=(0.0, 0.0, 0.0),
                            nearest_structure="pancreas", distance_mm=2.0, probability_positive=0.9 if positive
                            else 0.1, positive=positive)


def test_prediction_with_tumour(tiny_study, tmp_path):
    net = write_patient_model(tmp_path / "p.ts")
    model = PatientModel.load(tmp_path / "p.ts", "cpu")
    settings = load_settings()
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0))
    nodes = [_node(1, 400.0, True), _node(2, 900.0, False), _node(3, 150.0, True)]
    tumour, pred = classify_patient(registered, tiny_study.pdac, nodes, model, settings)
    assert tumour.found and tumour.volume_mm3 == pytest.approx(tiny_study.patient["tumour"]["volume_mm3"], rel=0.05)
    assert tumour.statement == "" and pred.statement == ""
    assert pred.method == "combined" and pred.largest_positive_ln_volume_mm3 == 400.0
    # the mean of the 9 patch probabilities of the network, volume of the largest *positive* node
    p = model.patches(tiny_study.venous, None, tiny_study.pdac)
    assert p.images.shape == (9, 1, 32, 32)
    with torch.no_grad():
        logits = net(torch.from_numpy(normalize_patches(p.images, NORM)), torch.from_numpy(p.masks),
                     torch.full((9, 1), 400.0))
    assert pred.probability == pytest.approx(float(torch.softmax(logits, 1)[:, 1].mean()), abs=1e-5)
    assert pred.threshold == 0.4 and pred.positive == (pred.probability >= 0.4)
    # the LN volume changes the patient's probability
    _, other = classify_patient(registered, tiny_study.pdac, [_node(1, 5000.0, True)], model, settings)
    assert other.probability != pytest.approx(pred.probability, abs=1e-6)
    # app.yaml's threshold overrides the model's
    s2 = dataclasses.replace(settings, patient_threshold=0.99)
    assert classify_patient(registered, tiny_study.pdac, nodes, model, s2)[1].threshold == 0.99



def test_no_tumour_falls_back_to_the_nodes_only_rule(tiny_study, tmp_path):
    write_patient_model(tmp_path / "p.ts")
    model = PatientModel.load(tmp_path / "p.ts", "cpu")
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0))
    empty = sitk.Image(tiny_study.pdac.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(tiny_study.pdac)
    for volume, expect in ((450.0, True), (120.0, False), (0.0, False)):
        tumour, pred = classify_patient(registered, empty, [_node(1, volume, True), _node(2, 2000.0, False)],
                                        model, load_settings())
        assert not tumour.found and tumour.statement == NO_TUMOUR_STATEMENT
        assert pred.method == "nodes_only" and pred.statement == NO_TUMOUR_STATEMENT
        assert pred.positive is expect  # threshold 300 mm^3 stored in the model
        assert pred.probability == pytest.approx(volume / (volume + 300.0))
        assert pred.positive == (pred.probability >= pred.threshold)


def test_the_tumour_choice_reaches_the_finding(tiny_study, tmp_path):
    """How the PDAC operator chose the tumour is carried into the finding; when it kept nothing
    because every region lay away from the pancreas, the statement says that, not "no tumour found"."""
    write_patient_model(tmp_path / "p.ts")
    model = PatientModel.load(tmp_path / "p.ts", "cpu")
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0))
    nodes = [_node(1, 450.0, True)]
    kept = TumourSelection(components=4, rule="pancreas_overlap", reach_mm=10.0)
    tumour, pred = classify_patient(registered, tiny_study.pdac, nodes, model, load_settings(), kept)
    assert tumour.found and (tumour.model_components, tumour.selection_rule) == (4, "pancreas_overlap")
    assert tumour.statement == "" and pred.method == "combined"
    empty = sitk.Image(tiny_study.pdac.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(tiny_study.pdac)
    far = TumourSelection(components=3, rule="none_near_pancreas", reach_mm=10.0)
    tumour, pred = classify_patient(registered, empty, nodes, model, load_settings(), far)
    assert not tumour.found and (tumour.model_components, tumour.selection_rule) == (3, "none_near_pancreas")
    assert "3 regions, all more than 10 mm from the segmented pancreas" in tumour.statement
    assert pred.method == "nodes_only" and pred.statement == tumour.statement and pred.positive


def test_nodes_only_model_and_rule(tmp_path, tiny_study):
    rule = NodesOnlyRule(250.0)
    v = torch.tensor([[0.0], [250.0], [1000.0]])
    probs = torch.softmax(rule(torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8), v), 1)[:, 1]
    np.testing.assert_allclose(probs.numpy(), nodes_only_score(v.numpy()[:, 0], 250.0), atol=1e-6)
    assert probs[1] == pytest.approx(0.5)
    save_model(rule, tmp_path / "n.ts", patient_metadata("nodes_only", {"type": "NodesOnlyRule"}, 0.5, 250.0),
               (torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1)))
    model = PatientModel.load(tmp_path / "n.ts", "cpu")
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0))
    settings = dataclasses.replace(load_settings(), patient_borderline_margin=0.05)
    tumour, pred = classify_patient(registered, tiny_study.pdac, [_node(1, 400.0, True)], model, settings)
    assert tumour.found and pred.method == "nodes_only" and pred.positive and pred.statement == ""
    assert pred.probability == pytest.approx(400 / 650) and not pred.borderline


def test_borderline_probability_is_marked(tmp_path, tiny_study):
    """A combined-model probability closer to the threshold than app.yaml's margin is borderline,
    and says so; one at the margin or farther, or with no margin, is not; the nodes-only rule (it
    reads no image through the registration) never is."""
    write_patient_model(tmp_path / "p.ts")
    model = PatientModel.load(tmp_path / "p.ts", "cpu")
    registered = registered_from_study(tiny_study, (3.0, 3.0, 3.0))
    settings = load_settings()
    _, plain = classify_patient(registered, tiny_study.pdac, [_node(1, 400.0, True)], model, settings)
    assert plain.method == "combined"
    distance = abs(plain.probability - plain.threshold)
    for margin, borderline in ((distance + 0.01, True), (max(distance - 0.01, 0.0), False), (0.0, False)):
        _, pred = classify_patient(registered, tiny_study.pdac, [_node(1, 400.0, True)], model,
                                   dataclasses.replace(settings, patient_borderline_margin=margin))
        assert pred.probability == plain.probability and pred.positive == plain.positive
        assert pred.borderline == borderline and pred.borderline_margin == margin
        assert ("Borderline" in pred.statement) == borderline
        assert not borderline or f"within {margin:.2f} of the decision threshold" in pred.statement
    assert not mark_borderline(dataclasses.replace(plain, probability=None), 0.5).borderline
    save_model(NodesOnlyRule(250.0), tmp_path / "n.ts",
               patient_metadata("nodes_only", {"type": "NodesOnlyRule"}, 0.5, 250.0),
               (torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1)))
    rule = PatientModel.load(tmp_path / "n.ts", "cpu")
    _, pred = classify_patient(registered, tiny_study.pdac, [_node(1, 260.0, True)], rule,
                               dataclasses.replace(settings, patient_borderline_margin=0.4))
    assert pred.probability == pytest.approx(260 / 510) and not pred.borderline and pred.borderline_margin == 0.0


def test_analysis_results_for_the_builders(tiny_study, tiny_study_dir, tmp_path):
    from lnmet.measurements import measure_lymph_nodes
    from lnmet.reporting.standin import load_phase
    from lnmet.types import RegisteredPhases

    write_patient_model(tmp_path / "p.ts")
    model = PatientModel.load(tmp_path / "p.ts", "cpu")
    settings = load_settings()
    venous = load_phase(tiny_study_dir / "dicom" / "venous", "venous")
    arterial = load_phase(tiny_study_dir / "dicom" / "arterial", "arterial")
    registered = RegisteredPhases(venous=venous, arterial=arterial, working_venous=venous.image,
                                  working_arterial=arterial.image, transform=sitk.Transform(), single_phase=False)
    ref = venous.image

    def on_ref(img, pixel):
        out = sitk.Cast(img, pixel)
        out.CopyInformation(ref)
        return out

    instances, organs, pdac = (on_ref(tiny_study.ln_instances, sitk.sitkUInt16), on_ref(tiny_study.organs, sitk.sitkUInt8),
                               on_ref(tiny_study.pdac, sitk.sitkUInt8))
    nodes = [dataclasses.replace(_node(m.index, m.volume_mm3, m.index == 1), nearest_structure=m.nearest_structure,
                                 distance_mm=m.distance_mm) for m in measure_lymph_nodes(instances, ref, organs)]
    findings = LNFindings(ln_instances=instances, lymph_nodes=nodes, organs=organs, threshold=0.5)
    tumour, pred = classify_patient(registered, pdac, nodes, model, settings)
    results = assemble_results(registered, findings, pdac, tumour, pred, [], settings)
    assert results.patient is pred and results.tumour is tumour and len(results.lymph_nodes) == len(nodes)
    assert pred.largest_positive_ln_volume_mm3 == pytest.approx(findings.largest_positive_volume_mm3)
    assert results.arterial is arterial.series and not results.run.single_phase


# ------------------------------------------------------------------------------------ the graph
def test_operators_run_as_a_graph(tiny_study, tiny_study_dir, tmp_path):
    """LN identification -> patient classifier in a Holoscan graph, with the ports of the app."""
    import sys

    from holoscan.conditions import CountCondition
    from monai.deploy.core import Application, Operator, OperatorSpec

    from lnmet.reporting.standin import load_phase
    from lnmet.types import RegisteredPhases
    from operators.ln_identification import LNIdentificationOperator
    from operators.patient_classifier import PatientClassifierOperator
    from lnmet.networks.ln_classifier import LNClassifier
    from test_ln_classifier_network import write_seg_model

    write_seg_model(tmp_path / "ln_seg.ts", spacing=3.0)
    net, seg_meta = LNClassifier.from_segmentation_model(tmp_path / "ln_seg.ts")
    save_model(net, tmp_path / "ln_cls" / "model.ts",
               dict(seg_meta, name="ln_cls", architecture=net.architecture((16, 16, 16)), patch_size=[16, 16, 16],
                    classes={"negative": 0, "positive": 1}, decision_threshold=0.0),  # every node positive
               (torch.zeros(1, 2, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)))
    write_patient_model(tmp_path / "patient_cls" / "model.ts")

    venous = load_phase(tiny_study_dir / "dicom" / "venous", "venous")
    arterial = load_phase(tiny_study_dir / "dicom" / "arterial", "arterial")
    ref = venous.image
    aligned = sitk.Cast(tiny_study.arterial_aligned, sitk.sitkFloat32)
    aligned.CopyInformation(ref)
    registered = RegisteredPhases(venous=venous, arterial=arterial, working_venous=ref, working_arterial=aligned,
                                  transform=sitk.Transform(), single_phase=False)

    def on_ref(img, pixel):
        out = sitk.Cast(img, pixel)
        out.CopyInformation(ref)
        return out

    inputs = {"registered_phases": registered, "ln_probability": on_ref(tiny_study.ln_instances > 0, sitk.sitkFloat32),
              "organs": on_ref(tiny_study.organs, sitk.sitkUInt8), "pdac": on_ref(tiny_study.pdac, sitk.sitkUInt8)}
    received: dict = {}

    class Source(Operator):
        def setup(self, spec: OperatorSpec) -> None:
            for k in inputs:
                spec.output(k)

        def compute(self, op_input, op_output, context) -> None:
            for k, v in inputs.items():
                op_output.emit(v, k)

    class Sink(Operator):
        def setup(self, spec: OperatorSpec) -> None:
            for k in ("tumour", "patient_prediction", "analysis_results", "lymph_nodes"):
                spec.input(k)

        def compute(self, op_input, op_output, context) -> None:
            for k in ("tumour", "patient_prediction", "analysis_results", "lymph_nodes"):
                received[k] = op_input.receive(k)

    class App(Application):
        def compose(self) -> None:
            src = Source(self, CountCondition(self, 1), name="source")
            ln = LNIdentificationOperator(self, model_path=tmp_path, name="ln_identification")
            pc = PatientClassifierOperator(self, model_path=tmp_path, name="patient_classifier")
            sink = Sink(self, name="sink")
            reg = ("registered_phases", "registered_phases")
            self.add_flow(src, ln, {reg, ("ln_probability", "ln_probability"), ("organs", "organs")})
            self.add_flow(src, pc, {reg, ("pdac", "pdac")})
            self.add_flow(ln, pc, {("ln_findings", "ln_findings")})
            self.add_flow(ln, sink, {("lymph_nodes", "lymph_nodes")})
            self.add_flow(pc, sink, {("tumour", "tumour"), ("patient_prediction", "patient_prediction"),
                                     ("analysis_results", "analysis_results")})

    App([sys.executable]).run()
    nodes = received["lymph_nodes"]
    assert nodes and all(n.positive for n in nodes)
    results = received["analysis_results"]
    assert results.lymph_nodes == nodes and results.tumour.found
    assert {m.name for m in results.models} == {"ln_cls", "patient_cls"}
    pred = received["patient_prediction"]
    assert pred.method == "combined" and pred.largest_positive_ln_volume_mm3 == max(n.volume_mm3 for n in nodes)
