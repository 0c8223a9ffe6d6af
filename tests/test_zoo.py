"""The zoo's architectures (examples/zoo/models.py), small: each trains for a second on
digits, exports with torch's exporters, converts, and its Loihi artifact runs bit-exact on
Lava. Conversion accuracy on the full-size zoo is bench/zoo.py's job, not a test's.

The networks are built for 12x12 images (the 8x8 digits, zero-padded) at width 4, so one
Lava run takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from snncompile.app.compile import CompileRequest, compile_model
from snncompile.errors import ModelError
from snncompile.frontend import import_onnx
from snncompile.ir import AvgPool2dNode, MaxPool2dNode
from snncompile.ir.options import ConversionOptions
from snncompile.sim.ann import ann_forward

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples/zoo"))
import models  # noqa: E402

HAVE_LAVA = importlib.util.find_spec("lava") is not None
SIDE, WIDTH = 12, 4
# Loihi settings the loihi target needs today (tests/test_loihi.py's): 18-bit membranes, the
# input as a current every step (its 24-bit current register), 8-bit weights.
LOIHI = dict(timesteps=8, weight_bits=8, membrane_bits=18, input_mode="every_step")


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits, zero-padded to 12x12, in [0, 1]: (train x, y), (test x, y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.pad(d.images.astype(np.float32) / 16.0, ((0, 0), (2, 2), (2, 2)))[:, None]
    y = d.target.astype(np.int64)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _trained(arch: str, digits) -> torch.nn.Module:
    """The architecture after one second of Adam on digits (BN statistics and all)."""
    torch.manual_seed(0)
    model = models.build(arch, side=SIDE, width=WIDTH)
    (x, y), _ = digits
    x = torch.from_numpy(models.input_layout(arch, x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for epoch in range(3):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _export(model: torch.nn.Module, x: np.ndarray, path: Path, dynamo: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), dynamo=True,
                              external_data=False, dynamic_shapes=({0: torch.export.Dim("n")},),
                              verbose=False)
        else:
            torch.onnx.export(model, torch.from_numpy(x[:1]), str(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    return path


@pytest.fixture(scope="module")
def built(digits, tmp_path_factory):
    """arch -> (torch model, legacy ONNX path, data folder with calib/test .npz)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            d = tmp_path_factory.mktemp(arch)
            model = _trained(arch, digits)
            (x, _), (xt, yt) = digits
            x, xt = models.input_layout(arch, x), models.input_layout(arch, xt)
            np.savez(d / "calib.npz", x=x[:200])
            np.savez(d / "test.npz", x=xt[:4], y=yt[:4])
            np.savez(d / "test_all.npz", x=xt, y=yt)
            cache[arch] = (model, _export(model, x, d / "model.onnx", dynamo=False), d)
        return cache[arch]
    return get


ARCHS = ["resnet", "mobilenet", "strided", "vgg", "mlp", "concat", "lenet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_exports_and_imports_with_both_exporters(arch, built, digits, tmp_path):
    """The legacy and the dynamo exporter's files import to graphs that compute the torch
    model's logits; the tiny training gets well above chance (so the conversion tests
    below convert a network that has learned something)."""
    model, legacy, _ = built(arch)
    _, (xt, yt) = digits
    xt = models.input_layout(arch, xt)
    with torch.no_grad():
        ref = model(torch.from_numpy(xt)).numpy()
    assert (ref.argmax(1) == yt).mean() > 0.3  # chance is 0.1
    for path in (legacy, _export(model, xt, tmp_path / "dynamo.onnx", dynamo=True)):
        g = import_onnx(onnx.load(str(path))).graph
        np.testing.assert_allclose(ann_forward(g, xt).numpy(), ref, rtol=1e-4, atol=1e-4)
        pools = [n for n in g.nodes if isinstance(n, MaxPool2dNode)]
        assert bool(pools) == (arch == "vgg")


def _convert(onnx_path: Path, d: Path, out: Path, input_bits: int = 8, **kw) -> dict:
    opts = ConversionOptions(**LOIHI, input_bits=input_bits)
    req = CompileRequest(model=str(onnx_path), out=str(out), target="loihi", calib=str(d / "calib.npz"),
                         options=opts, fanin=64, **kw)
    return compile_model(req)


@pytest.mark.skipif(not HAVE_LAVA, reason="lava-nc is not importable (needs Python 3.10)")
@pytest.mark.parametrize("arch", ARCHS)
def test_converts_to_loihi_and_runs_bit_exact_on_lava(arch, built, tmp_path):
    """The Loihi artifact (8-bit weights, fan-in 64, T = 8) gives on Lava exactly the spikes
    and outputs of the reference simulator; the VGG keeps its max pools (SpikeMaxPool)."""
    from snncompile.app.run import run_artifact

    _, onnx_path, d = built(arch)
    out = tmp_path / "out"
    # the MLP's first layer sums 64 input currents of up to 127 levels each, beyond Loihi's
    # 16-bit input port at 8-bit inputs (the loihi profile would choose the width; this test
    # builds its options directly)
    _convert(onnx_path, d, out, input_bits=4 if arch == "mlp" else 8)
    if arch == "lenet":  # its first average pool gets a relay under fan-in 64 (the conv after it reads 200 through it)
        rewrites = json.loads((out / "compile.json").read_text())["rewrites"]
        assert [len(r["nodes"]) for r in rewrites if r["pass"] == "relay_pools"] == [1]
    res = run_artifact(str(out), str(d / "test.npz"))
    assert res["bit_exact"], res["differences"]
    assert res["samples"] == 4


def test_vgg_keeps_max_pools_on_loihi_and_the_rewrite_stays_explicit(built, tmp_path):
    """As typed, the VGG's three max pools go to Loihi as spike-count max pools (no rewrite
    recorded); --maxpool avg is still there when asked for: recorded (which nodes), nothing
    else changes."""
    _, onnx_path, d = built("vgg")
    _convert(onnx_path, d, tmp_path / "keep")
    net = json.loads((tmp_path / "keep" / "loihi" / "network.json").read_text())
    assert len(net["pools"]) == 3
    assert json.loads((tmp_path / "keep" / "compile.json").read_text())["rewrites"] == []
    summary = _convert(onnx_path, d, tmp_path / "avg", maxpool="avg")
    info = json.loads((tmp_path / "avg" / "compile.json").read_text())
    (rewrite,) = info["rewrites"]
    pools = [n.output[0] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "MaxPool"]
    assert rewrite["pass"] == "maxpool_to_avgpool" and rewrite["nodes"] == pools and len(pools) == 3
    assert any("--maxpool avg" in w for w in summary["warnings"])
    # the artifact keeps the user's model (the ANN baseline is the max-pool network)
    kept = onnx.load(str(tmp_path / "avg" / "model.onnx"))
    assert sum(n.op_type == "MaxPool" for n in kept.graph.node) == 3


def test_maxpool_rewrite_keeps_windows_and_padding(onnx_kit, rng):
    """MaxPool -> AveragePool of the same kernel, stride and padding (the padding counted,
    as a sum pool does), GlobalMaxPool -> GlobalAveragePool; a model without max pooling
    comes back as it was; the Indices output, when used, cannot be rewritten."""
    from onnx import helper

    from snncompile.frontend.rewrite import maxpool_to_avgpool

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("GlobalMaxPool", ["p"], ["y"])]
    model = onnx_kit.model(nodes, in_shape=(2, 6, 6))
    new, done = maxpool_to_avgpool(model)
    assert done == ["p", "y"] and [n.op_type for n in model.graph.node][1] == "MaxPool"
    x = rng.uniform(-1, 1, (3, 2, 6, 6)).astype(np.float32)
    r = np.pad(np.maximum(x, 0), ((0, 0), (0, 0), (1, 1), (1, 1)))
    avg = np.stack([[r[:, :, i:i + 3, j:j + 3].mean((2, 3)) for j in (0, 2, 4)] for i in (0, 2, 4)])
    want = avg.transpose(2, 3, 0, 1).mean((2, 3))[:, :, None, None]
    np.testing.assert_allclose(onnx_kit.run_ort(new, x), want, rtol=1e-5, atol=1e-6)
    g = import_onnx(new).graph
    assert [type(n) for n in g.nodes].count(AvgPool2dNode) == 2
    same, none = maxpool_to_avgpool(new)
    assert same is new and none == []
    idx = [helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2]),
           helper.make_node("Cast", ["i"], ["y"], to=onnx.TensorProto.FLOAT)]
    with pytest.raises(ModelError, match="Indices"):
        maxpool_to_avgpool(onnx_kit.model(idx, in_shape=(1, 4, 4)))


def test_maxpool_to_conv_is_the_average_with_neurons_of_its_own(built, digits):
    """--maxpool conv computes what --maxpool avg computes (a depthwise convolution of the
    same window, weights 1/window, then a ReLU on the non-negative pooled values), and each
    pool becomes an IF layer of its own in the SNN."""
    from snncompile.frontend.rewrite import maxpool_to_avgpool, maxpool_to_conv

    _, onnx_path, d = built("vgg")
    model = onnx.load(str(onnx_path))
    (avg, pools), (conv, same) = maxpool_to_avgpool(model), maxpool_to_conv(model)
    assert pools == same and len(pools) == 3
    assert sum(n.op_type == "Conv" and n.name.endswith("#conv") for n in conv.graph.node) == 3
    _, (xt, _) = digits
    a, c = (import_onnx(m).graph for m in (avg, conv))
    np.testing.assert_allclose(ann_forward(c, xt).numpy(), ann_forward(a, xt).numpy(), rtol=1e-5, atol=1e-5)
    assert len([n for n in c.nodes if n.op == "relu"]) == len([n for n in a.nodes if n.op == "relu"]) + 3


def test_large_convolutions_fit_loihi_as_convolutions():
    """A convolution whose dense matrix would exceed the lowering's matrix bound (16x28x28
    -> 32x14x14: 79M entries) is a Lava Conv and builds no matrix: no violation; with a sum
    pool in front, the pool is a relay into the same Conv (no matrix either)."""
    from snncompile.ir import Conv2dNode, Graph, IFNode, InputNode
    from snncompile.plugin import get_backend

    rng = np.random.default_rng(0)

    def conv(name, inp, cin, cout, stride):
        w = rng.integers(-20, 21, (cout, cin, 3, 3)).astype(np.int32)
        return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w,
                          bias_int=np.zeros(cout, np.int64), stride=(stride, stride),
                          padding=(1, 1, 1, 1), bias_mode="every_step")

    def ifn(name, inp):
        return IFNode(name=name, inputs=[inp], threshold=np.asarray([100]), membrane_bits=18)

    def graph(pool: bool) -> Graph:
        mid = [AvgPool2dNode(name="p", inputs=["s1"], kernel=(2, 2), stride=(2, 2))] if pool else []
        nodes = [InputNode(name="x", shape=(1, 28, 28), out_scale=np.array(1.0), mode="every_step"),
                 conv("c1", "x", 1, 16, 1), ifn("s1", "c1"), *mid,
                 conv("c2", "p" if pool else "s1", 16, 32, 1 if pool else 2), ifn("s2", "c2"),
                 conv("c3", "s2", 32, 4, 2)]
        g = Graph(nodes, ["c3"], timesteps=4)
        g.validate()
        return g

    b = get_backend("loihi")
    assert [v for v in b.check(graph(pool=False)) if "folded" in v.quantity] == []
    # the sum pool in front is a relay into the same Conv, not folded into a matrix
    assert [v for v in b.check(graph(pool=True)) if "folded" in v.quantity] == []
    from snncompile_loihi.network import build_network
    (c,) = [c for c in build_network(graph(pool=True)).connections if c.dst == "s2"]
    assert c.kind == "conv" and c.pool is not None and c.weight.shape == (32, 16, 3, 3)
