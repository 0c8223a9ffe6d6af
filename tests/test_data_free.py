"""Thresholds without calibration data on networks where weight bounds break down."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from snncompile.calibrate.bn_stats import data_free_scales
from snncompile.calibrate.statistics import BOUND_LIMIT, weight_bounds
from snncompile.errors import ModelError
from snncompile.frontend import import_onnx
from snncompile.ir import IFNode
from snncompile.passes.convert import ConversionOptions, convert


def _deep_mlp(onnx_kit, depth: int, width: int):
    """``depth`` Gemm+ReLU layers at torch's default Linear init, U(+-1/sqrt(fan-in)), where
    the worst case grows about sqrt(width)/2 per layer."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], {}, "x"
    for i in range(depth + 1):
        k = 1 / np.sqrt(width)
        out = 3 if i == depth else width
        inits[f"w{i}"] = rng.uniform(-k, k, (out, width)).astype(np.float32)
        inits[f"b{i}"] = rng.uniform(-k, k, out).astype(np.float32)
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["y" if i == depth else f"h{i}"], transB=1))
        if i < depth:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
            prev = f"r{i}"
    return onnx_kit.model(nodes, inits, in_shape=(width,))


def test_weight_bounds_that_overflow_float32_are_refused_naming_the_layer(onnx_kit):
    """50 layers of width 256 at torch's default init: the worst case grows 8x per layer,
    past float32 by the 43rd; the conversion would multiply weights by it and get NaN."""
    graph = import_onnx(_deep_mlp(onnx_kit, 50, 256)).graph
    with pytest.raises(ModelError) as e:
        weight_bounds(graph, warn=False)
    assert "overflow" in str(e.value) and "'r" in str(e.value) and "--calib" in e.value.hint
    shallow = weight_bounds(import_onnx(_deep_mlp(onnx_kit, 4, 256)).graph, warn=False)
    assert all(0 < v[0] <= BOUND_LIMIT for v in shallow.lam.values())


def test_deep_network_without_data_gets_finite_thresholds(onnx_kit):
    model = _deep_mlp(onnx_kit, 50, 256)
    graph = import_onnx(model).graph
    cal = data_free_scales(model, graph)
    snn = convert(graph, cal, ConversionOptions())
    for n in snn.nodes:
        if isinstance(n, IFNode):
            assert np.all(np.isfinite(np.asarray(n.threshold, np.float64))) and np.all(n.threshold > 0)


def test_a_layer_no_batchnorm_statistic_reaches_gets_synthetic_scales(onnx_kit):
    """conv-ReLU (no BN: r0), conv-BN-ReLU (r1): r1 from the BN statistics, r0 from the
    activations on synthetic inputs, not from a weight bound."""
    from snncompile.calibrate.bn_stats import bn_scales
    from snncompile.calibrate.statistics import synthetic_scales

    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = {"w0": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(f32), "w1": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(f32),
             "g": np.full(4, 0.7, f32), "b": np.full(4, 0.2, f32), "m": np.zeros(4, f32), "v": np.ones(4, f32),
             "wd": rng.normal(0, 0.3, (3, 64)).astype(f32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["h1"]),
             helper.make_node("BatchNormalization", ["h1", "g", "b", "m", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("Gemm", ["f", "wd"], ["y"], transB=1)]
    model = onnx_kit.model(nodes, inits, in_shape=(3, 8, 8))
    graph = import_onnx(model).graph
    cal = bn_scales(model, graph, seed=5)
    syn = synthetic_scales(model, graph, percentile=99.9, seed=5, warn=False)
    assert np.allclose(cal.lam["r0"], syn.lam["r0"])
    assert cal.lam["r0"][0] < weight_bounds(graph, warn=False).lam["r0"][0]
    assert "1 that no statistic reaches from synthetic inputs ('r0')" in cal.warnings[0]
    assert "('r1')" in cal.warnings[0]


def test_synthetic_images_are_smooth_noise_spanning_the_input_range():
    from snncompile.calibrate.statistics import synthetic_inputs

    x = synthetic_inputs((2, 16, 16), 32, seed=1)
    assert x.shape == (32, 2, 16, 16) and x.dtype == np.float32
    assert np.allclose(x.reshape(32, -1).min(1), -1) and np.allclose(x.reshape(32, -1).max(1), 1)
    # 1/f noise: neighbouring pixels correlate strongly (independent pixels would not)
    assert np.corrcoef(x[..., :-1].ravel(), x[..., 1:].ravel())[0, 1] > 0.5
    assert np.array_equal(x, synthetic_inputs((2, 16, 16), 32, seed=1))
    v = synthetic_inputs((10,), 500, seed=1)
    assert v.min() >= -1 and v.max() <= 1 and abs(np.corrcoef(v[:, :-1].ravel(), v[:, 1:].ravel())[0, 1]) < 0.1


def test_without_data_biases_are_calibrated_on_the_synthetic_inputs(onnx_kit, tmp_path):
    from snncompile.app.compile import CompileRequest, compile_model

    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = {"w0": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(f32), "b0": rng.normal(0, 0.1, 4).astype(f32),
             "wd": rng.normal(0, 0.3, (3, 144)).astype(f32)}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("Flatten", ["r0"], ["f"]), helper.make_node("Gemm", ["f", "wd"], ["y"], transB=1)]
    import onnx
    onnx.save(onnx_kit.model(nodes, inits, in_shape=(1, 8, 8)), tmp_path / "m.onnx")
    import json

    compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / "a")))
    on = json.loads((tmp_path / "a/compile.json").read_text())
    rec = on["bias_calibration"]
    assert rec["synthetic"] is True and rec["samples"] == 256 and rec["layers"]
    assert on["calibration_samples"] == 0 and any("synthetic inputs" in w for w in on["warnings"])
    compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / "b"), calibrate_bias=False))
    assert "bias_calibration" not in json.loads((tmp_path / "b/compile.json").read_text())
