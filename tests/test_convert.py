"""Threshold normalization and primitive conversion: the SNN approaches the ANN as T grows,
thresholds and weights obey the scale rules of docs/semantics.md."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from snncompile.sim.ann import ann_forward
from snncompile.calibrate.statistics import activation_scales, weight_bounds
from snncompile.passes.convert import ConversionOptions, convert
from snncompile.errors import ModelError, UsageError
from snncompile.frontend import import_onnx
from snncompile.ir import AffineNode, IFNode, WeightedNode
from snncompile.sim.simulator import simulate


class ResNetish(nn.Module):
    """conv-relu, a residual block with BN, a concat of two branches, max pool, dense."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.ca = nn.Conv2d(6, 4, 1)
        self.cb = nn.Conv2d(6, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(7 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        a = torch.relu(self.c0(x))
        a = torch.relu(self.bn(self.c1(a)) + a)
        b = torch.cat([torch.relu(self.ca(a)), torch.relu(self.cb(a))], 1)
        b = self.avg(self.pool(b))
        return self.fc2(torch.relu(self.fc1(torch.flatten(b, 1))))


@pytest.fixture(scope="module")
def resnetish():
    torch.manual_seed(0)
    net = ResNetish()
    with torch.no_grad():  # a non-trivial BN to fold
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    net.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 2, 8, 8),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    x = np.random.default_rng(0).random((64, 2, 8, 8)).astype(np.float32)
    imported = import_onnx(model)
    return model, imported.graph, x


def test_calibration_scales_are_percentiles_of_relu_outputs(resnetish):
    model, ann, x = resnetish
    cal = activation_scales(model, ann, x, "percentile", 99.0)
    acts = ann_forward(ann, x, return_all=True)
    for name, lam in cal.lam.items():
        expect = np.percentile(acts[name].numpy(), 99.0)
        assert lam.shape == (1,)
        assert lam[0] == pytest.approx(expect, rel=1e-4)
    mx = activation_scales(model, ann, x, "max")
    ch = activation_scales(model, ann, x, "channel", 99.0)
    for name in cal.lam:
        assert mx.lam[name][0] == pytest.approx(acts[name].numpy().max(), rel=1e-5)
        assert ch.lam[name].shape == (ann[name].shape[0],)
    assert cal.input_absmax == pytest.approx(float(x.max()))


def test_weight_bounds_are_safe(resnetish):
    _, ann, x = resnetish
    cal = weight_bounds(ann, input_absmax=1.0)
    acts = ann_forward(ann, x, return_all=True)
    for name, lam in cal.lam.items():
        assert lam[0] >= acts[name].numpy().max()
    assert cal.warnings and "--calib" in cal.warnings[0]


@pytest.mark.parametrize("norm", ["percentile", "channel"])
def test_snn_approaches_ann_as_t_grows(resnetish, norm):
    model, ann, x = resnetish
    cal = activation_scales(model, ann, x, norm, 99.99)
    ref = ann_forward(ann, x).numpy()
    snn = convert(ann, cal, ConversionOptions(timesteps=8))
    errors = []
    for T in (8, 64, 512):
        out = simulate(snn, x, timesteps=T).output
        errors.append(np.abs(out - ref).mean() / np.abs(ref).mean())
    assert errors[2] < errors[0]
    assert errors[2] < 0.05, errors
    out = simulate(snn, x, timesteps=512).output
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_thresholds_and_weights_follow_the_scale_rules(resnetish):
    model, ann, x = resnetish
    cal = activation_scales(model, ann, x)
    a = convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=8))
    b = convert(ann, cal, ConversionOptions(timesteps=32, weight_bits=8))
    for na, nb in zip(a.nodes, b.nodes):
        if isinstance(na, IFNode):  # thresholds do not depend on T
            np.testing.assert_array_equal(na.threshold, nb.threshold)
            assert np.all(na.threshold >= 1)
            np.testing.assert_array_equal(na.v_init, na.threshold // 2)
            # theta = round(lam / scale of the IF's input)
            s_in = a[na.inputs[0]].out_scale
            np.testing.assert_array_equal(na.threshold, np.maximum(1, np.rint(na.lam.reshape(-1, 1, 1) / s_in)
                                                                   if len(na.shape) == 3 else np.rint(na.lam / s_in)))
        if isinstance(na, WeightedNode):
            assert np.abs(na.weight_int).max() <= 127
    # every weighted node outside a residual add uses the full 8-bit range
    adds = {i for n in a.nodes if n.op == "add" for i in n.inputs}
    for n in a.nodes:
        if isinstance(n, WeightedNode) and n.name not in adds:
            assert np.abs(n.weight_int).max() == 127, n.name
    # the residual skip got an identity affine with an integer multiplier, sharing the add's scale
    aligns = [n for n in a.nodes if isinstance(n, AffineNode)]
    assert len(aligns) == 1 and aligns[0].weight_int.min() >= 1
    add = next(n for n in a.nodes if n.op == "add")
    scales = {float(a[i].out_scale.ravel()[0]) for i in add.inputs}
    assert len(scales) == 1
    assert max(np.abs(a[i].weight_int).max() for i in add.inputs) == 127


def test_once_mode_puts_bias_at_first_step_only(resnetish):
    model, ann, x = resnetish
    cal = activation_scales(model, ann, x)
    once = convert(ann, cal, ConversionOptions(input_mode="once"))
    every = convert(ann, cal, ConversionOptions(input_mode="every_step"))
    first_once = [n for n in once.nodes if isinstance(n, WeightedNode)][0]
    first_every = [n for n in every.nodes if isinstance(n, WeightedNode)][0]
    assert first_once.bias_mode == "first_step" and first_every.bias_mode == "every_step"
    assert all(n.bias_mode == "every_step" for n in once.nodes if isinstance(n, WeightedNode)
               and n is not first_once)


def test_bad_options_are_refused(resnetish):
    model, ann, x = resnetish
    cal = activation_scales(model, ann, x)
    for opts in (ConversionOptions(timesteps=0), ConversionOptions(weight_bits=1),
                 ConversionOptions(reset="zero", input_mode="once"), ConversionOptions(v_init="x")):
        with pytest.raises(UsageError):
            convert(ann, cal, opts)
    with pytest.raises(UsageError):
        activation_scales(model, ann, x, "median")
    with pytest.raises(ModelError):
        convert(convert(ann, cal, ConversionOptions()), cal, ConversionOptions())


def test_model_with_fixed_batch_one_calibrates_and_evaluates(onnx_kit, tmp_path):
    """Zoo models often fix the batch axis at 1: onnxruntime then gets one sample at a time
    (calibration and the ANN baseline), and the numbers match a dynamic-batch export."""
    from onnx import helper as H

    from snncompile.app.compile import CompileRequest, compile_model
    from snncompile.measure.evaluate import evaluate_artifact

    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32),
             "g": rng.normal(0, 0.5, (3, 4 * 4 * 4)).astype(np.float32)}
    nodes = [H.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             H.make_node("Relu", ["c"], ["r"]), H.make_node("Flatten", ["r"], ["f"]),
             H.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    x = rng.random((7, 2, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 3, 7))
    results = {}
    for batch in (1, "N"):
        path = tmp_path / f"m_{batch}.onnx"
        onnx.save(onnx_kit.model(nodes, inits, in_shape=(2, 4, 4), batch=batch), str(path))
        out = str(tmp_path / f"out_{batch}")
        compile_model(CompileRequest(model=str(path), out=out, calib=str(tmp_path / "d.npz")))
        results[batch] = evaluate_artifact(out, str(tmp_path / "d.npz"))
    for key in ("ann_accuracy", "snn_accuracy", "synops_per_sample"):
        assert results[1][key] == results["N"][key]


def test_a_converted_graph_carries_its_options_typed_through_saving_and_requantization(resnetish, tmp_path):
    import dataclasses
    import json

    from snncompile.ir.serialize import load_graph, save_graph
    from snncompile.passes.requant import requantize
    from snncompile.passes.timesteps import with_timesteps

    model, ann, x = resnetish
    calib = activation_scales(model, ann, x)
    opts = ConversionOptions(timesteps=8, weight_bits=10, reset="subtract", input_mode="every_step")
    snn = convert(ann, calib, opts)
    assert snn.conversion == opts and "conversion" not in snn.meta
    assert with_timesteps(snn, 4).conversion == dataclasses.replace(opts, timesteps=4)
    assert requantize(snn, weight_bits=6).conversion == dataclasses.replace(opts, weight_bits=6)
    save_graph(snn, tmp_path)
    assert load_graph(tmp_path).conversion == opts
    # a manifest of an earlier version kept the options, and more, in meta
    m = json.loads((tmp_path / "ir.json").read_text())
    m["meta"]["conversion"] = dict(m.pop("conversion"), normalization="percentile")
    del m["meta"]["conversion"]["spikes"]  # an option that version predates: its default
    (tmp_path / "ir.json").write_text(json.dumps(m))
    old = load_graph(tmp_path)
    assert old.conversion == opts and "conversion" not in old.meta
    w = [n.name for n in snn.nodes if isinstance(n, WeightedNode)][0]
    assert np.array_equal(requantize(old)[w].weight_int, requantize(snn)[w].weight_int)
