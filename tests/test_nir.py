"""The nir backend: the written file round-trips through nir.read (structure, shapes, integer
weights, metadata), a reader of NIR's own node semantics (nirtorch wiring our node modules)
reproduces the reference simulator's spikes and outputs bit for bit, and what NIR cannot
express is refused naming each layer, with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nir  # installed with backends/nir by `make setup`
import numpy as np
import pytest

from snncompile.ir import AvgPool2dNode, Conv2dNode, DenseNode, IFNode, InputNode, WeightedNode
from snncompile.plugin import get_backend
from snncompile.testing import check_case, zoo_case


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True,
                          text=True, timeout=300)


def nir_variant(name: str, reset: str | None = "zero"):
    """A zoo case in the modes NIR can say: every-step input and biases, membranes starting
    at 0, reset to zero (NIR's IF) or, with ``reset=None``, as the case has it (subtraction:
    NIR's I -> Threshold -> Scale loop). The reference simulator defines every mode."""
    c = zoo_case(name)
    g = c.graph.copy()
    for n in g.nodes:
        if isinstance(n, InputNode):
            n.mode = "every_step"
        elif isinstance(n, IFNode):
            n.reset, n.v_init = reset or n.reset, None
        elif isinstance(n, WeightedNode):
            n.bias_mode = "every_step"
    g.validate()
    return replace(c, name=f"{name}_nir", graph=g)


# every zoo network whose ops NIR has (no max pool, concat, pad, uneven padding, saturation)
EXPRESSIBLE = ["dense_subtract_once", "dense_zero_every_step", "conv_groups_dilation",
               "avgpool_sum", "residual_add", "zero_weights", "bias_modes", "two_outputs"]


@pytest.mark.parametrize("reset", ["zero", None])
@pytest.mark.parametrize("case", EXPRESSIBLE)
def test_nir_reader_is_bit_exact_with_the_reference(case, reset, tmp_path):
    be = get_backend("nir")
    variant = nir_variant(case, reset)
    assert be.check(variant.graph) == []
    assert check_case(be, variant, tmp_path)  # raises ConformanceError on any difference


def test_file_round_trips_through_nir_read(tmp_path):
    from snncompile_nir import GRAPH_FILE, nir_names

    c = nir_variant("residual_add")
    g = c.graph
    get_backend("nir").lower(g, tmp_path)
    back = nir.read(str(tmp_path / GRAPH_FILE))
    names = nir_names(g)
    assert set(back.nodes) == set(names.values()) | {f"{names[o]}_acc" for o in g.outputs} | {"output"}
    want_edges = {(names[i], names[n.name]) for n in g.nodes for i in n.inputs}
    assert want_edges <= {tuple(e) for e in back.edges}
    for n in g.nodes:
        node = back.nodes[names[n.name]]
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in node.metadata.items()}
        assert meta["ir_name"] == n.name
        if isinstance(n, Conv2dNode):
            assert isinstance(node, nir.Conv2d)
            np.testing.assert_array_equal(node.weight, n.weight_int)
            np.testing.assert_array_equal(node.bias, n.bias_int)
            assert tuple(node.output_type["output"]) == n.shape
        elif isinstance(n, DenseNode):
            assert isinstance(node, nir.Affine)
            np.testing.assert_array_equal(node.weight, n.weight_int)
        elif isinstance(n, IFNode):
            assert isinstance(node, nir.IF) and node.v_threshold.shape == n.shape
            th = np.broadcast_to(n.threshold.reshape((-1,) + (1,) * (len(n.shape) - 1)), n.shape)
            np.testing.assert_array_equal(node.v_threshold, th - 1)  # v > th - 1  <=>  v >= th
            np.testing.assert_array_equal(node.v_reset, 0)
            assert meta["reset"] == "zero" and meta["membrane_bits"] == n.membrane_bits
        elif isinstance(n, AvgPool2dNode):
            assert isinstance(node, nir.SumPool2d)
        elif isinstance(n, InputNode):
            assert meta["mode"] == "every_step" and meta["bits"] == n.bits
            assert float(np.ravel(meta["out_scale"])[0]) == float(np.ravel(n.out_scale)[0])
    gm = {k: v.decode() if isinstance(v, bytes) else v for k, v in back.metadata.items()}
    assert gm["timesteps"] == g.timesteps and gm["dt"] == 1.0 and gm["input_mode"] == "every_step"
    assert gm["format"] == "snncompile-nir" and gm["format_version"] == 1


def test_reset_by_subtraction_is_written_as_an_integrator_threshold_loop(tmp_path):
    from snncompile_nir import GRAPH_FILE, nir_names

    g = nir_variant("dense_subtract_once", reset=None).graph
    get_backend("nir").lower(g, tmp_path)
    back = nir.read(str(tmp_path / GRAPH_FILE))
    names = nir_names(g)
    for n in g.nodes:
        if not isinstance(n, IFNode):
            continue
        assert n.reset == "subtract"
        s = names[n.name]
        th = np.broadcast_to(n.threshold.reshape((-1,) + (1,) * (len(n.shape) - 1)), n.shape)
        assert isinstance(back.nodes[s], nir.Threshold) and isinstance(back.nodes[f"{s}_v"], nir.I)
        np.testing.assert_array_equal(back.nodes[s].threshold, th - 0.5)
        np.testing.assert_array_equal(back.nodes[f"{s}_reset"].scale, -th)
        edges = {tuple(e) for e in back.edges}
        assert {(names[n.inputs[0]], f"{s}_v"), (f"{s}_v", s), (s, f"{s}_reset"), (f"{s}_reset", f"{s}_v")} <= edges
        assert (names[n.inputs[0]], s) not in edges
        meta = back.nodes[s].metadata
        assert (meta["reset"].decode() if isinstance(meta["reset"], bytes) else meta["reset"]) == "subtract"


def test_what_nir_cannot_say_is_refused_naming_each_layer():
    be = get_backend("nir")
    found = {(v.layer, v.quantity) for v in be.check(zoo_case("maxpool_counts").graph)}
    assert {("m1", "op"), ("m2", "op"), ("x", "input mode"), ("s1", "initial membrane"),
            ("c1", "bias mode")} <= found and not any(q == "reset mode" for _, q in found)
    assert {(v.layer, v.quantity) for v in be.check(nir_variant("concat").graph)} == {
        ("cat", "op"), ("cat2", "op")}
    assert {(v.layer, v.quantity) for v in be.check(nir_variant("reshape_pad").graph)} == {
        ("r", "op"), ("p", "op")}
    uneven = be.check(nir_variant("conv_stride_padding").graph)
    assert {(v.layer, v.quantity) for v in uneven} == {("c1", "padding"), ("c2", "padding")}
    assert "NIR pads both sides of an axis equally" in str(uneven[0])


def test_digits_cli_refuses_what_nir_cannot_say_and_writes_a_runnable_nir_file(digits_dir, tmp_path):
    d = digits_dir
    base = ["convert", str(d / "digits_cnn.onnx"), "--calib", str(d / "calib.npz"), "-T", "8",
            "--target", "nir"]
    # set explicitly, the modes NIR cannot express are refused (the profile never overrides them)
    r = cli(*base, "--input-mode", "once", "--v-init", "half", "-o", str(tmp_path / "default"))
    assert r.returncode == 6 and not (tmp_path / "default").exists()
    for expect in ("input mode is once, where the target takes every_step", "initial membrane",
                   "fix: --v-init zero", "bias mode first_step"):
        assert expect in r.stderr
    out = tmp_path / "ok"  # reset by subtraction (the default): NIR's I -> Threshold -> Scale loop
    r = cli(*base, "-o", str(out))  # left to the nir profile: every-step input, v_init zero
    assert r.returncode == 0, r.stderr
    assert "--v-init zero" in r.stdout
    graph = nir.read(str(out / "nir" / "graph.nir"))
    assert sum(isinstance(n, nir.Threshold) for n in graph.nodes.values()) == 3
    test = np.load(d / "test.npz")
    np.savez(tmp_path / "few.npz", x=test["x"][:40], y=test["y"][:40])
    r = cli("run", str(out), "--data", str(tmp_path / "few.npz"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["bit_exact"] is True and res["backend"] == "nir" and res["samples"] == 40


def test_export_writes_the_same_graph_as_the_target_and_refuses_cleanly(tmp_path):
    from click.testing import CliRunner

    from snncompile.targets.artifact import write_artifact
    from snncompile.app.cli import main

    g = nir_variant("avgpool_sum").graph
    write_artifact(tmp_path / "art", g, onnx_placeholder(), {"target": "sim"})

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    r = run("export", tmp_path / "art", "--format", "nir", "-o", tmp_path / "m.nir")
    assert r.exit_code == 0, r.output
    back = nir.read(str(tmp_path / "m.nir"))
    from snncompile_nir import nir_names, to_nir

    want = to_nir(g)
    assert set(back.nodes) == set(want.nodes) and sorted(map(tuple, back.edges)) == sorted(want.edges)
    assert names_ok(nir_names(g), back)
    r = run("export", tmp_path / "art", "-o", tmp_path / "m.nir")
    assert r.exit_code == 2 and "already exists" in r.output
    write_artifact(tmp_path / "dflt", zoo_case("maxpool_counts").graph, onnx_placeholder(), {})
    r = run("export", tmp_path / "dflt", "-o", tmp_path / "x.nir")
    assert r.exit_code == 6 and "layer 'm1': op maxpool2d cannot be written as NIR" in r.output
    assert "--maxpool avg" in r.output
    assert not (tmp_path / "x.nir").exists() and not list(tmp_path.glob(".x.nir*"))


def onnx_placeholder():
    """An artifact needs its source model; export never reads it."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))


def names_ok(names: dict[str, str], back) -> bool:
    """Every IR node is in the file under its sanitized name, with its IR name in metadata."""
    for ir, key in names.items():
        meta = back.nodes[key].metadata.get("ir_name")
        if (meta.decode() if isinstance(meta, bytes) else meta) != ir:
            return False
    return True
