"""Spiking relays after average pools under a fan-in limit (snncompile.frontend.relay)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from snncompile.frontend.relay import relay_pools
from snncompile.ir import DenseNode
from snncompile.ir.serialize import load_graph


def _gap_head(onnx_kit, rng, act: str = "Relu", side: int = 6):
    """conv 3x3 (8 channels) -> act -> global average pool over side x side -> flatten -> dense 10."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    nodes += [helper.make_node(act, ["c"], ["r"])] if act else [helper.make_node("Identity", ["c"], ["r"])]
    nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"w": rng.normal(0, 0.3, (8, 2, 3, 3)).astype(np.float32),
             "b": rng.normal(0, 0.1, 8).astype(np.float32),
             "fw": rng.normal(0, 0.3, (10, 8)).astype(np.float32),
             "fb": np.zeros(10, np.float32)}
    return onnx_kit.model(nodes, inits, in_shape=(2, side, side))


def _convert_fanin_64(m: onnx.ModelProto, rng, tmp_path) -> subprocess.CompletedProcess:
    """`convert m --calib (64 uniform inputs) --bits 8 --fanin 64 -T 8 -o tmp_path/out`, which
    must succeed."""
    onnx.save(m, tmp_path / "m.onnx")
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, (64, *shape)).astype(np.float32))
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(tmp_path / "m.onnx"), "--calib",
                        str(tmp_path / "calib.npz"), "--bits", "8", "--fanin", "64", "-T", "8",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_a_relay_follows_a_pool_whose_window_the_limit_would_cut(onnx_kit, rng):
    """The dense layer after a 6x6 global pool reads 36 x 8 = 288 inputs through it: under
    --fanin 64 a ReLU is added after the pool, which takes over the pool's tensor name, and the
    model computes the same outputs; under --fanin 288 nothing changes."""
    m = _gap_head(onnx_kit, rng)
    x = rng.normal(0, 1, (5, 2, 6, 6)).astype(np.float32)
    out, pools = relay_pools(m, 64)
    assert pools == ["p"]
    relu = [n for n in out.graph.node if n.op_type == "Relu" and n.output[0] == "p"]
    assert len(relu) == 1 and relu[0].input[0] == "p_pooled"
    onnx.checker.check_model(out)
    np.testing.assert_allclose(onnx_kit.run_ort(out, x), onnx_kit.run_ort(m, x), rtol=1e-6, atol=1e-6)
    same, none = relay_pools(m, 288)
    assert none == [] and same is m


@pytest.mark.parametrize("act", ["", "Sigmoid"])
def test_no_relay_where_the_pool_may_read_negative_values(onnx_kit, rng, act):
    """A ReLU after a pool equals the pool only for non-negative inputs: a pool of a conv's
    raw output (or any other activation) gets none."""
    m = _gap_head(onnx_kit, rng, act)
    assert relay_pools(m, 8)[1] == []


def test_convert_under_a_fanin_limit_keeps_every_channel_after_the_pool(onnx_kit, rng, tmp_path):
    """`convert --fanin 64`: the relay is said, recorded in compile.json, and the classifier
    keeps all 8 pooled channels per output (through the pool it could keep only one)."""
    r = _convert_fanin_64(_gap_head(onnx_kit, rng), rng, tmp_path)
    assert "spiking neurons added after 1 average pool(s) (p)" in r.stderr
    info = json.loads((tmp_path / "out" / "compile.json").read_text())
    assert [rw["pass"] for rw in info["rewrites"]] == ["relay_pools"]
    g = load_graph(tmp_path / "out")
    dense = [n for n in g.nodes if isinstance(n, DenseNode)]
    assert len(dense) == 1 and (np.asarray(dense[0].weight) != 0).sum(axis=1).min() == 8


def test_a_map_larger_than_the_limit_is_pooled_in_exact_stages(onnx_kit, rng, tmp_path):
    """A 14x14 map under --fanin 64 (196 positions, more than one neuron may read): a 7x7
    average pool with its relay, then the global pool of the 2x2 rest with its own; the
    outputs are the model's, and the headline-style command converts it (it was refused)."""
    m = _gap_head(onnx_kit, rng, side=14)
    x = rng.normal(0, 1, (3, 2, 14, 14)).astype(np.float32)
    out, pools = relay_pools(m, 64)
    assert pools == ["p"]
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Conv", "Relu", "AveragePool", "Relu", "GlobalAveragePool", "Relu", "Flatten", "Gemm"]
    np.testing.assert_allclose(onnx_kit.run_ort(out, x), onnx_kit.run_ort(m, x), rtol=1e-5, atol=1e-6)
    onnx.save(m, tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(tmp_path / "m.onnx"),
                        "--bits", "8", "--fanin", "64", "-T", "4", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_a_relay_threshold_stays_within_its_window(onnx_kit, rng, tmp_path):
    """A channel that is large at one position in a few inputs and tiny elsewhere gets a tiny
    scale before the pool and a large one after it; the relay's scale is capped at its
    input's (an average of spikes carries no more than one of them), so every relay threshold
    is at most the window, 36 (2947 without the cap; the random ResNet-50's relay had
    12,219,240, past Loihi's 17-bit vth)."""
    m = _gap_head(onnx_kit, rng)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0]).copy()
    b = onnx.numpy_helper.to_array(m.graph.initializer[1]).copy()
    w[0], b[0] = 0.0, -0.99
    w[0, 0, 1, 1] = 1.0  # channel 0: at most 0.01 but where the input is large
    for t, v in ((m.graph.initializer[0], w), (m.graph.initializer[1], b)):
        t.CopyFrom(onnx.numpy_helper.from_array(v, t.name))
    x = rng.uniform(0, 1, (256, 2, 6, 6)).astype(np.float32)
    x[:8, 0, 2, 2] = 30.0  # eight inputs, one position each
    np.savez(tmp_path / "calib.npz", x=x)
    onnx.save(m, tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(tmp_path / "m.onnx"), "--calib",
                        str(tmp_path / "calib.npz"), "--bits", "8", "--fanin", "64", "-T", "8",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    relay = load_graph(tmp_path / "out")["p"]
    assert int(np.max(relay.threshold)) <= 36


def _lenet(onnx_kit, rng, pool: str = "AveragePool", **pool_attrs):
    """LeNet-5's shape on 1x16x16: conv 5x5 (4) -> ReLU -> 2x2 average pool -> conv 5x5 (8)
    -> ReLU -> 2x2 average pool -> flatten -> dense 10."""
    attrs = pool_attrs or {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node(pool, ["r1"], ["p1"], **attrs),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    side = (16 - 1) // attrs["strides"][0] + 1 if pool != "AveragePool" or attrs.get("pads") else 8
    s2 = (side - 4) // 2
    inits = {"w1": rng.normal(0, 0.3, (4, 1, 5, 5)).astype(np.float32),
             "b1": rng.normal(0, 0.1, 4).astype(np.float32),
             "w2": rng.normal(0, 0.2, (8, 4, 5, 5)).astype(np.float32),
             "b2": rng.normal(0, 0.1, 8).astype(np.float32),
             "fw": rng.normal(0, 0.3, (10, 8 * s2 * s2)).astype(np.float32),
             "fb": np.zeros(10, np.float32)}
    return onnx_kit.model(nodes, inits, in_shape=(1, 16, 16))


def test_local_pools_before_a_layer_the_limit_would_cut_get_relays(onnx_kit, rng):
    """LeNet's 2x2 average pools: the second conv reads 4 x 25 = 100 inputs through the
    first pool's windows (10 x 10 positions per channel: 400), the dense layer 8 x 4 x 4
    pooled values through the second (512). Under --fanin 64 both get relays, the outputs
    stay the model's; under --fanin 512 only the first (the dense layer reads all 512 inputs
    either way), and under --fanin 400 neither."""
    m = _lenet(onnx_kit, rng)
    x = rng.normal(0, 1, (5, 1, 16, 16)).astype(np.float32)
    out, pools = relay_pools(m, 64)
    assert pools == ["p1", "p2"]
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "AveragePool", "Relu", "Conv", "Relu",
                                                   "AveragePool", "Relu", "Flatten", "Gemm"]
    onnx.checker.check_model(out)
    np.testing.assert_allclose(onnx_kit.run_ort(out, x), onnx_kit.run_ort(m, x), rtol=1e-5, atol=1e-6)
    assert relay_pools(m, 128)[1] == ["p1"]
    assert relay_pools(m, 400)[1] == []


def test_an_overlapping_pool_counts_each_input_once(onnx_kit, rng):
    """A 3x3 pool of stride 1 (Inception's pool branch) before a 5x5 conv: 7 x 7 positions
    per channel (196 for 4 channels), not 9 x 25: a relay under --fanin 150, none under 196."""
    m = _lenet(onnx_kit, rng, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    assert relay_pools(m, 150)[1][0] == "p1"
    assert "p1" not in relay_pools(m, 196)[1]


def test_convert_gives_the_conv_after_a_local_pool_its_own_inputs(onnx_kit, rng, tmp_path):
    """`convert --fanin 64` on the LeNet shape: the second conv reads the first relay's
    neurons, one synapse per pooled value, and keeps 64 of its 100 weights per output (through
    the pool its 400 composed inputs would be cut to 64); the dense layer reads the second
    relay. The line says so and compile.json records both."""
    r = _convert_fanin_64(_lenet(onnx_kit, rng), rng, tmp_path)
    assert "spiking neurons added after 2 average pool(s) (p1, p2)" in r.stderr
    info = json.loads((tmp_path / "out" / "compile.json").read_text())
    (rw,) = [rw for rw in info["rewrites"] if rw["pass"] == "relay_pools"]
    assert rw["nodes"] == ["p1", "p2"]
    g = load_graph(tmp_path / "out")
    c2 = g["c2"]
    assert c2.inputs == ["p1"] and g["p1"].op == "if"
    kept = (np.asarray(c2.weight) != 0).reshape(c2.weight.shape[0], -1).sum(axis=1)
    assert kept.max() == 64


def test_no_relay_where_the_pool_window_itself_is_over_the_limit(onnx_kit, rng):
    """A relay's neurons read the pool's window: under --fanin 3 a 2x2 pool gets none (the
    limit's own refusal names the pool and the smallest fan-in that works)."""
    assert relay_pools(_lenet(onnx_kit, rng), 3)[1] == []
