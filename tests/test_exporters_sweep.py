"""Constructs found by the exporter sweep (bench/exporter_sweep.py) in real exports: each test
builds the smallest model that contains one, the way torch writes it, and checks the import
against onnxruntime (or the refusal's wording)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper

from snncompile import ir
from snncompile.errors import ModelError, UnsupportedOpError
from snncompile.frontend import import_onnx

H = helper.make_node


def _torch_onnx(net: nn.Module, shape, **kw) -> onnx.ModelProto:
    """``net`` exported by torch (legacy unless ``dynamo=True``), dynamic batch."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    x = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kw.pop("dynamo", False):
            prog = torch.onnx.export(net.eval(), (x,), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("n")},), **kw)
            return prog.model_proto
        torch.onnx.export(net.eval(), (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **kw)
    return onnx.load_from_string(buf.getvalue())


def _net(mid: nn.Module, side: int = 7) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), mid,
                        nn.Flatten(), nn.LazyLinear(5))
    net(torch.zeros(1, 3, side, side))  # materialize the lazy layer
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _x(rng, n=4, shape=(3, 7, 7)):
    return rng.normal(size=(n, *shape)).astype(np.float32) * 2


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_dynamo_without_optimizer_castlike_expand(onnx_kit, rng):
    """torch.onnx.export(dynamo=True, optimize=False) writes a conv's zero bias as
    Expand(CastLike(0, input), Shape(weight)): CastLike reads the activation only for its type."""
    m = _torch_onnx(_net(nn.ReLU()), (3, 7, 7), dynamo=True, optimize=False)
    assert "CastLike" in {n.op_type for n in m.graph.node}
    res = onnx_kit.check(m, _x(rng), rtol=1e-4, atol=1e-5)
    assert [n.op for n in res.graph.nodes] == ["input", "conv2d", "relu", "flatten", "dense"]


def test_castlike_of_an_activation_and_size(onnx_kit, rng):
    nodes = [H("CastLike", ["x", "like"], ["c"]), H("Size", ["c"], ["n"]), H("Relu", ["c"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, {"like": np.float32(0)}), _x(rng, shape=(3, 8, 8)))
    assert [n.op for n in res.graph.nodes] == ["input", "relu"]
    int_like = onnx_kit.model([H("CastLike", ["x", "like"], ["c"]), H("Cast", ["c"], ["y"], to=1)],
                              {"like": np.int64(0)})
    with pytest.raises(ModelError, match="integer type"):
        import_onnx(int_like)


@pytest.mark.parametrize("pool, side, out", [(nn.MaxPool2d(3, 2, ceil_mode=True), 8, 4),
                                              (nn.MaxPool2d(2, 2, ceil_mode=True), 7, 4),
                                              (nn.MaxPool2d(3, 2, 1, ceil_mode=True), 8, 5)])
def test_maxpool_ceil_mode_is_end_padding(onnx_kit, rng, pool, side, out):
    """ceil_mode adds a partial window at the border: for a maximum that is more end padding
    (never the maximum), as the opset-9 exporter writes it itself."""
    m = _torch_onnx(_net(nn.Sequential(nn.ReLU(), pool), side), (3, side, side), opset_version=17)
    res = onnx_kit.check(m, _x(rng, shape=(3, side, side)))
    mp = next(n for n in res.graph if isinstance(n, ir.MaxPool2dNode))
    assert mp.shape[1:] == (out, out) and mp.padding[2:] > mp.padding[:2]


def test_avgpool_ceil_mode_partial_window_is_refused():
    m = _torch_onnx(_net(nn.Sequential(nn.ReLU(), nn.AvgPool2d(2, 2, ceil_mode=True))), (3, 7, 7),
                    opset_version=17)
    with pytest.raises(ModelError, match="ceil_mode=1") as info:
        import_onnx(m)
    assert "ceil_mode=False" in info.value.hint


@pytest.mark.parametrize("fn, top", [
    (lambda x: torch.minimum(torch.relu(x), torch.tensor(6.0)), 6.0),      # ReLU6 as Relu+Min
    (lambda x: torch.minimum(torch.maximum(x, torch.tensor(0.0)), torch.tensor(3.0)), 3.0),
    (lambda x: torch.maximum(x, torch.tensor(0.0)), None),                 # ReLU as Max
])
def test_relu_written_as_max_and_min(onnx_kit, rng, fn, top):
    m = _torch_onnx(_net(_Fn(fn)), (3, 7, 7), opset_version=17)
    res = onnx_kit.check(m, _x(rng) * 3)
    relus = [n for n in res.graph if isinstance(n, ir.ReluNode)]
    assert len(relus) == 1 and relus[0].max_value == top  # the unclipped ReLU is gone


def test_min_max_that_are_not_relus_are_refused(onnx_kit):
    for fn, what in ((lambda x: torch.minimum(x, torch.tensor(6.0)), "only on a ReLU's output"),
                     (lambda x: torch.maximum(x, torch.tensor(1.0)), r"Max\(x, 1\) is not a ReLU")):
        with pytest.raises(ModelError, match=what) as info:
            import_onnx(_torch_onnx(_net(_Fn(fn)), (3, 7, 7), opset_version=17))
        assert "ReLU6" in info.value.hint


def test_min_of_a_relu_read_elsewhere_keeps_it(onnx_kit, rng):
    """The unclipped ReLU stays when another layer reads it too (a residual add here)."""
    nodes = [H("Relu", ["x"], ["r"]), H("Min", ["r", "six"], ["m"]), H("Add", ["r", "m"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, {"six": np.float32(0.5)}), _x(rng, shape=(3, 8, 8)))
    assert sorted(n.max_value or 0 for n in res.graph if isinstance(n, ir.ReluNode)) == [0, 0.5]


def test_silu_is_named(onnx_kit):
    with pytest.raises(UnsupportedOpError, match=r"SiLU/Swish x \* sigmoid\(x\)"):
        import_onnx(_torch_onnx(_net(nn.SiLU()), (3, 7, 7), opset_version=17))


def test_float16_export_calibrates(rng):
    """A model exported in float16 gets its calibration inputs in float16 (onnxruntime refuses
    float32 for it) and gives float32 activations back."""
    from snncompile.calibrate.statistics import onnx_forward

    net = _net(nn.ReLU())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_net(nn.ReLU()).half(), (torch.randn(2, 3, 7, 7).half(),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}})
    m16 = onnx.load_from_string(buf.getvalue())
    res = import_onnx(m16)
    x = _x(rng)
    (out,) = list(onnx_forward(m16, res.input_name, [res.output_name], x))
    y = out[res.output_name]
    assert y.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(y, net.float()(torch.from_numpy(x)).numpy(), rtol=0.02, atol=0.02)


def test_float64_conv_model_names_the_fix(rng):
    from snncompile.calibrate.statistics import onnx_forward

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_net(nn.ReLU()).double(), (torch.randn(2, 3, 7, 7).double(),), buf,
                          dynamo=False, input_names=["x"], output_names=["y"])
    m64 = onnx.load_from_string(buf.getvalue())
    with pytest.raises(ModelError, match="onnxruntime cannot run") as info:
        list(onnx_forward(m64, "x", ["y"], _x(rng, n=2)))
    assert "model.float()" in info.value.hint


def test_avgpool_ceil_mode_of_old_exporters_names_it(onnx_kit):
    """Before opset 10, torch writes AvgPool2d(ceil_mode=True) as end padding excluded from
    the count: the refusal says so (the user wrote no padding and no count_include_pad)."""
    m = _torch_onnx(_net(nn.Sequential(nn.ReLU(), nn.AvgPool2d(2, 2, ceil_mode=True))), (3, 7, 7),
                    opset_version=9)
    with pytest.raises(ModelError, match="count_include_pad=0") as info:
        import_onnx(m)
    assert "ceil_mode=False" in info.value.hint


def test_fanin_refusal_after_a_global_pool_names_the_pool():
    """A classifier after a global average pool over 4x4 reads 16 inputs per weight: the
    headline's --fanin refuses it for a smaller limit, and says the pool is why."""
    from snncompile.errors import UsageError
    from snncompile.ir import AvgPool2dNode, DenseNode, FlattenNode, Graph, IFNode, InputNode
    from snncompile.passes.constrain import fanin_budgets

    w = np.ones((3, 2), np.int64)
    g = Graph([InputNode(name="x", shape=(2, 4, 4), out_scale=np.array(1.0), mode="every_step"),
               IFNode(name="s", inputs=["x"], shape=(2, 4, 4), threshold=np.array([3])),
               AvgPool2dNode(name="gap", inputs=["s"], kernel=(4, 4), stride=(4, 4)),
               FlattenNode(name="f", inputs=["gap"]),
               DenseNode(name="d", inputs=["f"], weight=w.astype(np.float32), weight_int=w)],
              ["d"], timesteps=4)
    g.validate()
    with pytest.raises(UsageError, match="connect 16 inputs per weight") as info:
        fanin_budgets(g, 8)
    assert "use --fanin 16 or more; or pool to a smaller map" in info.value.hint


def test_min_of_a_relu_with_another_branch_between(onnx_kit, rng):
    """The ReLU that Min clips is dropped even when another branch was converted between
    them (graph order interleaves branches)."""
    nodes = [H("Relu", ["x"], ["r"]), H("Relu", ["x"], ["other"]), H("Min", ["r", "six"], ["m"]),
             H("Add", ["m", "other"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, {"six": np.float32(0.5)}), _x(rng, shape=(3, 8, 8)))
    assert "r" not in [n.name for n in res.graph.nodes]
    assert sorted(n.max_value or 0 for n in res.graph if isinstance(n, ir.ReluNode)) == [0, 0.5]
