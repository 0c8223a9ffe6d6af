"""One figure, one definition: fan-in and per-layer figures mean the same in `inspect`,
`evaluate`, the limit rules and --fanin; a T sweep says which T its per-layer table shows;
warnings are printed once; violations of non-numeric limits read as sentences."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snncompile.targets.rules import Limits, Violation, check_limits


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def build(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures") / "snn"
    r = _cli("convert", str(digits_dir / "digits_cnn.onnx"), "--calib", str(digits_dir / "calib.npz"),
             "-T", "8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_fanin_is_one_figure_in_inspect_evaluate_and_the_limit_rule(digits_dir, build):
    from snncompile.app.inspection import inspect_artifact, inspect_model
    from snncompile.measure.evaluate import evaluate_artifact
    from snncompile.targets.artifact import read_artifact

    model = {r["name"]: r["fanin"] for r in inspect_model(str(digits_dir / "digits_cnn.onnx"))["layers"]
             if r["fanin"] is not None}
    built = {r["name"]: r["fanin"] for r in inspect_artifact(str(build))["nodes"] if "fanin" in r}
    ev = evaluate_artifact(str(build), str(digits_dir / "test.npz"))
    evaluated = {r["name"]: r["max_fanin"] for r in ev["layers"]}
    assert model == built == evaluated  # the same layers, the same counts
    conv2 = next(r for r in ev["layers"] if r["synapses"] == "avgpool2d>conv2d")
    assert conv2["max_fanin"] == 16 * 9 * 4  # counted through the 2x2 sum pool
    # the limit rule (what --fanin and every backend check) reports exactly these numbers
    found = {v.layer: v.value for v in check_limits(read_artifact(str(build)).graph, Limits(fan_in=1))}
    assert found == {k: v for k, v in evaluated.items() if v > 1}


def test_sweep_per_layer_table_is_at_the_builds_t(digits_dir, build):
    from snncompile.measure.evaluate import evaluate_artifact

    own = evaluate_artifact(str(build), str(digits_dir / "test.npz"))
    swept = evaluate_artifact(str(build), str(digits_dir / "test.npz"), [4, 8, 16])
    assert swept["timesteps"] == swept["build_timesteps"] == 8
    assert swept["layers"] == own["layers"]
    assert [r["timesteps"] for r in swept["sweep"]] == [4, 8, 16]
    r = _cli("evaluate", str(build), "--data", str(digits_dir / "test.npz"), "-T", "4,16")
    assert r.returncode == 0, r.stderr
    assert "per layer at T=16 (the last of the sweep; the build's T is 8)" in r.stdout


def test_inspect_prints_each_warning_once(tmp_path):
    rng = np.random.default_rng(0)
    H = helper.make_node
    nodes = [H("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), H("Relu", ["c"], ["r"]),
             H("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             H("Flatten", ["p"], ["f"]), H("Gemm", ["f", "W2"], ["y"], transB=1)]
    inits = {"W": rng.normal(0, .3, (4, 1, 3, 3)).astype(np.float32),
             "W2": rng.normal(0, .3, (3, 16)).astype(np.float32)}
    g = helper.make_graph(nodes, "mp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [onnx.ValueInfoProto(name="y")],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(onnx.shape_inference.infer_shapes(m), str(tmp_path / "mp.onnx"))
    r = _cli("inspect", str(tmp_path / "mp.onnx"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("spike-count max pooling") == 1, r.stderr


def test_violation_messages_read_naturally():
    num = Violation("conv", "fan-in", 576, 64, "--fanin 64")
    assert str(num) == "layer 'conv': fan-in (576) exceeds max (64); fix: --fanin 64"
    mode = Violation("input", "input mode", "once", "every_step", "--input-mode every_step")
    assert str(mode) == ("layer 'input': input mode is once, where the target takes every_step; "
                         "fix: --input-mode every_step")
    reset = Violation("if1", "reset mode", "zero", "subtract/other", "--reset subtract")
    assert "reset mode is zero, where the target takes subtract or other" in str(reset)
    assert "exceeds" not in str(mode) + str(reset)
