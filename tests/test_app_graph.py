"""The composed graph: every edge names real ports, nothing is left dangling, models match operators.

Composes the application (without running it) with stand-in models, then inspects Holoscan's flow
graph. Fast: no study is processed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from holoscan.core import ConditionType

from app.application import PDACLNMetApp, _flows, _nodes, required_models
from app.startup import run_startup_checks
from app_support import make_standin_models


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    models, manifest = make_standin_models(tmp / "standins", names=required_models())
    (tmp / "in").mkdir()
    (tmp / "in" / "a.dcm").write_bytes(b"x")
    mp = pytest.MonkeyPatch()
    mp.setenv("PDAC_LN_MODEL_MANIFEST", str(manifest))
    try:
        state = run_startup_checks(tmp / "in", tmp / "out", models, required_models())
        app = PDACLNMetApp([sys.executable, "app"], state=state)
        app.compose()
    finally:
        mp.undo()
    return app


def _edges(app) -> dict[tuple[str, str], dict[str, set[str]]]:
    g = app.graph
    return {(a.name, b.name): g.get_port_map(a, b) for a in g.get_nodes() for b in g.get_next_nodes(a)}


def test_flows_name_declared_ports(composed):
    ops = {op.name: op for op in composed.operators_built}
    checked = 0
    for flow in _flows():
        if flow.src not in ops or flow.dst not in ops:
            continue
        for out_port, in_port in flow.ports:
            assert out_port in ops[flow.src].spec.outputs, f"{flow.src} has no output port {out_port!r}"
            assert in_port in ops[flow.dst].spec.inputs, f"{flow.dst} has no input port {in_port!r}"
            checked += 1
    assert checked >= 4, "the intake part of the graph at least must be wired"


def test_connected_optional_inputs_wait_for_their_message(composed):
    """Inputs an operator declares optional but the graph connects must not be read before they arrive."""
    for (_, dst), ports in _edges(composed).items():
        op = next(o for o in composed.operators_built if o.name == dst)
        for ins in ports.values():
            for name in ins:
                kinds = [c[0] for c in op.spec.inputs[name].conditions]
                assert ConditionType.MESSAGE_AVAILABLE in kinds or ConditionType.NONE not in kinds, f"{dst}.{name}"


def test_every_required_input_is_connected(composed):
    received: dict[str, set[str]] = {}
    for (_, dst), ports in _edges(composed).items():
        for ins in ports.values():
            received.setdefault(dst, set()).update(ins)
    for op in composed.operators_built:
        for name, port in op.spec.inputs.items():
            optional = any(c[0] == ConditionType.NONE for c in port.conditions)
            assert optional or name in received.get(op.name, set()), f"{op.name}.{name} is not connected"


def test_every_output_is_consumed(composed):
    sent: dict[str, set[str]] = {}
    for (src, _), ports in _edges(composed).items():
        sent.setdefault(src, set()).update(ports)
    for op in composed.operators_built:
        for name, port in op.spec.outputs.items():
            optional = any(c[0] == ConditionType.NONE for c in port.conditions)
            assert optional or name in sent.get(op.name, set()), f"{op.name}.{name} is produced but no flow takes it"


def test_model_names_match_the_operators():
    """The app verifies the models the operators load: the names must agree."""
    for node in _nodes():
        module = importlib.import_module(node.module)
        declared = getattr(module, "MODEL_NAME", None)
        if declared is not None:
            assert node.models == (declared,), f"{node.name}: app expects {node.models}, operator loads {declared}"


def test_bundled_manifest_lists_every_required_model():
    root = Path(__file__).resolve().parent.parent
    manifest = root / "model_manifest.json"
    if not manifest.exists():
        pytest.skip("no bundled models / model_manifest.json yet")
    import json

    listed = {e["name"] for e in json.loads(manifest.read_text())["models"]}
    assert set(required_models()) <= listed
