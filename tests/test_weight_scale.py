"""Per-channel weight scales (``--weight-scale channel``): a layer feeding only IF neurons
quantizes each output channel against its own largest weight, and the channel's neurons'
thresholds absorb the scale, so a channel of small weights keeps its levels where one scale
per layer rounds it to nothing. The integers' semantics do not change (thresholds were per
channel already), so every backend runs such a graph as before; what is checked here is
that the levels are kept, the function with them, the limits the per-layer scale respects,
and the readout's single scale."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

from snncompile.calibrate.statistics import activation_scales
from snncompile.frontend import import_onnx
from snncompile.ir import Conv2dNode, DenseNode, IFNode
from snncompile.measure.report.measure import dequantized
from snncompile.passes.convert import ConversionOptions, convert
from snncompile.passes.requant import with_params
from snncompile.sim.ann import ann_forward
from snncompile.sim.simulator import simulate

SMALL = 3          # the output channel of the first convolution whose weights are 1/30 of the others'


def _model(onnx_kit):
    """conv 2->4 (channel SMALL scaled down) - ReLU - 1x1 conv 4->4 - ReLU - global average
    pool - dense 4->3."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32)
    w1[SMALL] /= 30
    b1 = np.array([0.1, 0.05, 0.0, 0.004], np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32)
    w2[:, SMALL] *= 30  # the small channel matters downstream as much as the others
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(4, np.float32),
             "w3": rng.normal(0, 1, (3, 4)).astype(np.float32), "b3": np.zeros(3, np.float32)}
    return onnx_kit.model(nodes, inits, in_shape=(2, 6, 6))


@pytest.fixture(scope="module")
def converted(onnx_kit):
    """The ANN, its inputs and calibration, and its conversions at 4 bits under each scale."""
    model = _model(onnx_kit)
    ann = import_onnx(model).graph
    x = np.random.default_rng(1).random((256, 2, 6, 6)).astype(np.float32)
    cal = activation_scales(model, ann, x, "channel")
    opts = ConversionOptions(timesteps=32, weight_bits=4)
    return ann, x, cal, {s: convert(ann, cal, dataclasses.replace(opts, weight_scale=s)) for s in ("layer", "channel")}


def _first_conv(g):
    return next(n for n in g.nodes if isinstance(n, Conv2dNode))


def test_a_small_channel_keeps_its_levels(converted):
    _, _, _, g = converted
    layer, channel = _first_conv(g["layer"]), _first_conv(g["channel"])
    assert np.abs(layer.weight_int[SMALL]).max() == 0          # 4 bits, one scale: nothing left
    assert np.abs(channel.weight_int[SMALL]).max() >= 3        # its own scale (gain capped at 16)
    for s in g:  # every channel within the width, none coarser than under one scale
        assert np.abs(_first_conv(g[s]).weight_int).max() <= 7
    assert np.all(np.abs(channel.weight_int).reshape(4, -1).max(1) >= np.abs(layer.weight_int).reshape(4, -1).max(1))
    err = {s: np.abs(dequantized(g[s], _first_conv(g[s]))[SMALL] - _first_conv(g[s]).weight[SMALL]).max()
           for s in g}
    assert err["channel"] < err["layer"] / 4
    # the neurons of the small channel take the scale in their threshold: theta = lam / scale
    if_layer, if_channel = (next(n for n in g[s].nodes if isinstance(n, IFNode)) for s in ("layer", "channel"))
    th_l = np.broadcast_to(if_layer.threshold, if_layer.shape)[:, 0, 0]
    th_c = np.broadcast_to(if_channel.threshold, if_channel.shape)[:, 0, 0]
    assert th_c[SMALL] > 8 * th_l[SMALL]


def test_the_small_channel_spikes_as_its_activation_says(converted):
    ann, x, _, g = converted
    ref = ann_forward(ann, x).numpy()
    err = {s: np.abs(simulate(g[s], x).outputs[g[s].outputs[0]] - ref).mean() for s in g}
    assert err["channel"] < 0.5 * err["layer"], err


def test_outputs_keep_one_scale_and_inputs_stay_within_the_layer_bound(converted):
    _, _, _, g = converted
    for s in g:
        out = g[s][g[s].outputs[0]]
        assert isinstance(out, DenseNode) and np.size(out.out_scale) == 1
    for n_l, n_c in zip(*(list(x for x in g[s].nodes if isinstance(x, (Conv2dNode, DenseNode)))
                          for s in ("layer", "channel"))):
        mass = lambda n: np.abs(n.weight_int.reshape(n.weight_int.shape[0], -1)).sum(1).max()  # noqa: E731
        assert mass(n_c) <= mass(n_l) + n_l.weight_int[0].size  # rounding: at most one level a weight


def test_a_narrow_membrane_limits_the_gain(converted):
    """Where a channel's own scale would put its threshold past a quarter of the membrane's
    range, the scale stops there (or at the layer's, where that is larger already)."""
    ann, _, cal, _ = converted
    th = {}
    for mb in (32, 8):
        for s in ("layer", "channel"):
            g = convert(ann, cal, ConversionOptions(timesteps=8, weight_bits=4, input_bits=4,
                                                          membrane_bits=mb, weight_scale=s))
            th[mb, s] = np.broadcast_to(next(n for n in g.nodes if isinstance(n, IFNode)).threshold,
                                        (4, 6, 6))[:, 0, 0]
    assert np.any(th[32, "channel"] > 2 ** 6)                       # wide: the gain takes it past
    assert np.all(th[8, "channel"] <= np.maximum(th[8, "layer"], 2 ** 6))
    assert np.all(th[8, "channel"] >= th[8, "layer"])


def test_requantization_after_training_keeps_the_channel_scales(converted):
    """What tuning writes back (the float weights changed) is quantized per channel again."""
    _, _, _, g = converted
    snn = g["channel"]
    conv = _first_conv(snn)
    re = with_params(snn, {conv.name: conv.weight * 1.1}, {})
    assert np.abs(_first_conv(re).weight_int[SMALL]).max() >= 3
    assert np.size(_first_conv(re).out_scale) == 4
