"""Each supported ONNX op: a tiny model run in onnxruntime and through import_onnx + ann_forward
must give the same numbers (dynamic batch, random weights, fixed seeds)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto, helper

from snncompile import ir
from snncompile.frontend import import_onnx, supported_ops

H = helper.make_node


def w(rng, *shape, scale=0.5):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def x_img(rng, c=3, h=8, wd=8, n=4):
    return rng.normal(size=(n, c, h, wd)).astype(np.float32)


def ops_of(res):
    return [n.op for n in res.graph.nodes]


# -- Conv ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs, cin, cout, k", [
    ({}, 3, 4, 3),
    ({"group": 3}, 3, 6, 3),
    ({"strides": [2, 1]}, 3, 4, 3),
    ({"pads": [0, 1, 2, 1]}, 3, 4, 3),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, 3, 4, 3),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 3, 4, 4),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 3, 4, 4),
    ({"auto_pad": "VALID"}, 3, 4, 3),
])
def test_conv(onnx_kit, rng, attrs, cin, cout, k):
    node = H("Conv", ["x", "W", "B"], ["y"], kernel_shape=[k, k], **attrs)
    m = onnx_kit.model([node], {"W": w(rng, cout, cin // attrs.get("group", 1), k, k),
                                "B": w(rng, cout)}, in_shape=(cin, 9, 8))
    res = onnx_kit.check(m, x_img(rng, cin, 9, 8))
    assert ops_of(res) == ["input", "conv2d"]


def test_conv_without_bias(onnx_kit, rng):
    m = onnx_kit.model([H("Conv", ["x", "W"], ["y"])], {"W": w(rng, 5, 3, 1, 1)})
    onnx_kit.check(m, x_img(rng))


# -- Gemm / MatMul ------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b, alpha, beta, c_shape", [
    (0, 1.0, 1.0, (5,)), (1, 1.0, 1.0, (5,)), (1, 0.5, 2.0, (1, 5)), (0, 2.0, 0.3, ()),
])
def test_gemm(onnx_kit, rng, trans_b, alpha, beta, c_shape):
    b = w(rng, 5, 6) if trans_b else w(rng, 6, 5)
    node = H("Gemm", ["x", "B", "C"], ["y"], transB=trans_b, alpha=alpha, beta=beta)
    m = onnx_kit.model([node], {"B": b, "C": w(rng, *c_shape)}, in_shape=(6,))
    res = onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))
    assert ops_of(res) == ["input", "dense"]


def test_matmul_add_is_one_dense(onnx_kit, rng):
    nodes = [H("MatMul", ["x", "W"], ["h"]), H("Add", ["h", "b"], ["y"])]
    m = onnx_kit.model(nodes, {"W": w(rng, 6, 4), "b": w(rng, 4)}, in_shape=(6,))
    res = onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))
    assert ops_of(res) == ["input", "dense"]
    assert res.graph.outputs == ["y"]  # the dense absorbed the Add and carries its name


def test_matmul_without_add(onnx_kit, rng):
    m = onnx_kit.model([H("MatMul", ["x", "W"], ["y"])], {"W": w(rng, 6, 4)}, in_shape=(6,))
    res = onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))
    assert np.all(res.graph["y"].bias == 0)


# -- BatchNorm and per-channel affine maps --------------------------------------------------
def _bn_inits(rng, c):
    return {"s": w(rng, c) + 1, "bb": w(rng, c), "mu": w(rng, c),
            "var": np.abs(w(rng, c)) + 0.5}


def test_batchnorm_after_conv_is_folded(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             H("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["bn"], epsilon=1e-3),
             H("Relu", ["bn"], ["y"])]
    m = onnx_kit.model(nodes, {"W": w(rng, 4, 3, 3, 3), "B": w(rng, 4), **_bn_inits(rng, 4)})
    res = onnx_kit.check(m, x_img(rng))
    assert ops_of(res) == ["input", "conv2d", "relu"]
    assert res.graph.nodes[1].name == "bn"


def test_batchnorm_as_mul_add_is_folded(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W"], ["c"]), H("Mul", ["c", "a"], ["m"]),
             H("Add", ["m", "b"], ["z"]), H("Relu", ["z"], ["y"])]
    inits = {"W": w(rng, 4, 3, 3, 3), "a": w(rng, 1, 4, 1, 1), "b": w(rng, 4, 1, 1)}
    res = onnx_kit.check(onnx_kit.model(nodes, inits), x_img(rng))
    assert not any(isinstance(n, ir.AffineNode) for n in res.graph)


def test_batchnorm_after_relu_stays_affine(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W"], ["c"]), H("Relu", ["c"], ["r"]),
             H("BatchNormalization", ["r", "s", "bb", "mu", "var"], ["y"])]
    m = onnx_kit.model(nodes, {"W": w(rng, 4, 3, 3, 3), **_bn_inits(rng, 4)})
    res = onnx_kit.check(m, x_img(rng))
    assert ops_of(res) == ["input", "conv2d", "relu", "affine"]


def test_batchnorm_1d_on_dense(onnx_kit, rng):
    nodes = [H("Gemm", ["x", "B"], ["g"], transB=1),
             H("BatchNormalization", ["g", "s", "bb", "mu", "var"], ["y"])]
    m = onnx_kit.model(nodes, {"B": w(rng, 5, 6), **_bn_inits(rng, 5)}, in_shape=(6,))
    res = onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))
    assert ops_of(res) == ["input", "dense"]


def test_input_normalization_sub_div(onnx_kit, rng):
    nodes = [H("Sub", ["x", "mean"], ["s"]), H("Div", ["s", "std"], ["n"]),
             H("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1])]
    inits = {"mean": w(rng, 1, 3, 1, 1), "std": np.abs(w(rng, 1, 3, 1, 1)) + 0.5,
             "W": w(rng, 4, 3, 3, 3)}
    res = onnx_kit.check(onnx_kit.model(nodes, inits), x_img(rng))
    # normalization before a padded conv cannot be folded exactly: it stays (merged) in front
    assert ops_of(res) == ["input", "affine", "conv2d"]


@pytest.mark.parametrize("op, const_first", [("Mul", False), ("Mul", True), ("Add", True),
                                             ("Sub", True), ("Sub", False), ("Div", False)])
def test_scalar_arithmetic(onnx_kit, rng, op, const_first):
    ins = ["k", "x"] if const_first else ["x", "k"]
    m = onnx_kit.model([H(op, ins, ["y"])], {"k": np.float32(1.7)})
    res = onnx_kit.check(m, x_img(rng))
    assert ops_of(res) == ["input", "affine"]


# -- activations ----------------------------------------------------------------------------
def test_relu(onnx_kit, rng):
    res = onnx_kit.check(onnx_kit.model([H("Relu", ["x"], ["y"])]), x_img(rng))
    assert res.graph["y"].calib_tensor == "y"


@pytest.mark.parametrize("opset", [17, 6])
def test_clip_0_6(onnx_kit, rng, opset):
    if opset >= 11:
        node, inits = H("Clip", ["x", "lo", "hi"], ["y"]), {"lo": np.float32(0), "hi": np.float32(6)}
    else:
        node, inits = H("Clip", ["x"], ["y"], min=0.0, max=6.0), {}
    m = onnx_kit.model([node], inits, opset=opset)
    res = onnx_kit.check(m, x_img(rng) * 5)
    relu = res.graph["y"]
    assert isinstance(relu, ir.ReluNode) and relu.max_value == 6.0 and relu.calib_tensor == "y"


# -- pooling --------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [0, 1, 2, 0], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},  # same size as floor here
])
def test_average_pool(onnx_kit, rng, attrs):
    res = onnx_kit.check(onnx_kit.model([H("AveragePool", ["x"], ["y"], **attrs)]), x_img(rng))
    assert ops_of(res) == ["input", "avgpool2d"]


def test_global_average_pool(onnx_kit, rng):
    nodes = [H("GlobalAveragePool", ["x"], ["g"]), H("Flatten", ["g"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, in_shape=(3, 5, 7)), x_img(rng, 3, 5, 7))
    assert res.graph["g"].kernel == (5, 7)


@pytest.mark.parametrize("opset, keepdims", [(17, 1), (17, 0), (18, 1), (18, 0)])
def test_reduce_mean(onnx_kit, rng, opset, keepdims):
    if opset < 18:
        node, inits = H("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims), {}
    else:
        node = H("ReduceMean", ["x", "ax"], ["y"], keepdims=keepdims)
        inits = {"ax": np.array([-2, -1], np.int64)}
    res = onnx_kit.check(onnx_kit.model([node], inits, opset=opset), x_img(rng))
    assert res.graph["y"].shape == ((3, 1, 1) if keepdims else (3,))


def test_maxpool_warns_with_node_name(onnx_kit, rng, caplog):
    node = H("MaxPool", ["x"], ["y"], name="pool_7", kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    with caplog.at_level(logging.WARNING, logger="snncompile"):
        res = onnx_kit.check(onnx_kit.model([node]), x_img(rng))
    assert ops_of(res) == ["input", "maxpool2d"]
    assert len(res.warnings) == 1 and "pool_7" in res.warnings[0]
    assert "spike-count max pooling" in res.warnings[0]
    assert "pool_7" in caplog.text


def test_maxpool_before_relu_is_swapped(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W"], ["c"]), H("MaxPool", ["c"], ["p"], kernel_shape=[2, 2],
                                              strides=[2, 2]),
             H("Clip", ["p", "lo", "hi"], ["y"])]
    inits = {"W": w(rng, 4, 3, 3, 3), "lo": np.float32(0), "hi": np.float32(1)}
    res = onnx_kit.check(onnx_kit.model(nodes, inits), x_img(rng))
    assert ops_of(res) == ["input", "conv2d", "relu", "maxpool2d"]
    relu = res.graph.nodes[2]
    assert relu.calib_tensor == "c" and relu.max_value == 1.0
    assert res.graph.outputs == ["y"]


# -- shape ops ------------------------------------------------------------------------------
def test_flatten(onnx_kit, rng):
    res = onnx_kit.check(onnx_kit.model([H("Flatten", ["x"], ["y"], axis=1)]), x_img(rng))
    assert ops_of(res) == ["input", "flatten"]


def test_reshape_via_shape_gather_unsqueeze_concat(onnx_kit, rng):
    """The legacy torch exporter's pattern for x.view(x.size(0), -1)."""
    nodes = [H("Relu", ["x"], ["r"]), H("Shape", ["r"], ["s"]),
             H("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.INT64, [], [0])),
             H("Gather", ["s", "zero"], ["n"], axis=0),
             H("Unsqueeze", ["n", "ax"], ["n1"]),
             H("Constant", [], ["minus1"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
             H("Concat", ["n1", "minus1"], ["shape"], axis=0),
             H("Reshape", ["r", "shape"], ["f"]), H("Gemm", ["f", "B"], ["y"], transB=1)]
    m = onnx_kit.model(nodes, {"ax": np.array([0], np.int64), "B": w(rng, 5, 3 * 8 * 8)})
    res = onnx_kit.check(m, x_img(rng))
    assert ops_of(res) == ["input", "relu", "flatten", "dense"]


def test_reshape_to_image(onnx_kit, rng):
    nodes = [H("Reshape", ["x", "shape"], ["r"]), H("Conv", ["r", "W"], ["y"])]
    m = onnx_kit.model(nodes, {"shape": np.array([-1, 1, 8, 8], np.int64),
                               "W": w(rng, 2, 1, 3, 3)}, in_shape=(64,))
    res = onnx_kit.check(m, rng.normal(size=(4, 64)).astype(np.float32))
    assert ops_of(res) == ["input", "reshape", "conv2d"]


def test_squeeze_unsqueeze(onnx_kit, rng):
    nodes = [H("GlobalAveragePool", ["x"], ["g"]), H("Squeeze", ["g", "ax"], ["s"]),
             H("Unsqueeze", ["s", "ax2"], ["u"]), H("Flatten", ["u"], ["y"])]
    inits = {"ax": np.array([2, 3], np.int64), "ax2": np.array([-1], np.int64)}
    res = onnx_kit.check(onnx_kit.model(nodes, inits), x_img(rng))
    assert res.graph[res.graph.outputs[0]].shape == (3,)


def test_add_residual(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), H("Relu", ["c"], ["r"]),
             H("Add", ["r", "x"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, {"W": w(rng, 3, 3, 3, 3)}), x_img(rng))
    assert ops_of(res)[-1] == "add"


def test_sum_of_three(onnx_kit, rng):
    nodes = [H("Relu", ["x"], ["r"]), H("Mul", ["x", "k"], ["m"]), H("Sum", ["x", "r", "m"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, {"k": np.float32(-2)}), x_img(rng))
    assert ops_of(res)[-1] == "add"


def test_concat(onnx_kit, rng):
    nodes = [H("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), H("Concat", ["x", "c"], ["y"], axis=1)]
    res = onnx_kit.check(onnx_kit.model(nodes, {"W": w(rng, 2, 3, 3, 3)}), x_img(rng))
    assert res.graph["y"].axis == 0 and res.graph["y"].shape == (5, 8, 8)


def test_concat_features(onnx_kit, rng):
    nodes = [H("Gemm", ["x", "B"], ["g"]), H("Concat", ["g", "x"], ["y"], axis=-1)]
    m = onnx_kit.model(nodes, {"B": w(rng, 6, 2)}, in_shape=(6,))
    onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))


@pytest.mark.parametrize("opset", [17, 18, 2])
def test_pad(onnx_kit, rng, opset):
    if opset == 2:
        node, inits = H("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 1, 0, 3]), {}
    elif opset == 17:
        node = H("Pad", ["x", "p"], ["y"])
        inits = {"p": np.array([0, 0, 1, 2, 0, 1, 0, 3], np.int64)}
    else:
        node = H("Pad", ["x", "p", "", "ax"], ["y"])
        inits = {"p": np.array([0, 1, 2, 1, 0, 3], np.int64), "ax": np.array([1, 2, 3], np.int64)}
    res = onnx_kit.check(onnx_kit.model([node], inits, opset=opset), x_img(rng))
    assert res.graph["y"].shape == (4, 9, 13)


def test_dropout_identity_cast_are_aliases(onnx_kit, rng):
    nodes = [H("Dropout", ["x"], ["d", "mask"]), H("Identity", ["d"], ["i"]),
             H("Cast", ["i"], ["c"], to=TensorProto.FLOAT), H("Relu", ["c"], ["y"])]
    res = onnx_kit.check(onnx_kit.model(nodes, opset=13), x_img(rng))
    assert ops_of(res) == ["input", "relu"] and res.graph["y"].inputs == ["x"]


# -- output handling ------------------------------------------------------------------------
@pytest.mark.parametrize("tail", [["Softmax"], ["LogSoftmax"], ["ArgMax"], ["Softmax", "ArgMax"]])
def test_trailing_ops_are_stripped(onnx_kit, rng, tail):
    nodes = [H("Gemm", ["x", "B", "C"], ["logits"], transB=1)]
    prev = "logits"
    for i, op in enumerate(tail):
        out = "y" if i == len(tail) - 1 else f"t{i}"
        nodes.append(H(op, [prev], [out], axis=1) if op != "Softmax" else H(op, [prev], [out]))
        prev = out
    m = onnx_kit.model(nodes, {"B": w(rng, 5, 6), "C": w(rng, 5)}, in_shape=(6,))
    res = onnx_kit.check(m, rng.normal(size=(4, 6)).astype(np.float32))
    assert res.output_name == "logits" and ops_of(res) == ["input", "dense"]
    assert res.graph.meta["onnx_graph_output"] == "y"


def test_meta_and_names(onnx_kit, rng):
    res = import_onnx(onnx_kit.model([H("Relu", ["data"], ["y"])], in_name="data"))
    assert res.input_name == "data" and res.output_name == "y"
    assert res.graph.meta["onnx_input"] == "data" and res.graph.meta["source"] == ""
    assert res.graph.input.source == "data" and res.graph.input.shape == (3, 8, 8)
    assert res.graph.timesteps is None and not res.graph.is_spiking


def test_fixed_batch_model(onnx_kit, rng):
    nodes = [H("Relu", ["x"], ["r"]), H("Reshape", ["r", "shape"], ["y"])]
    m = onnx_kit.model(nodes, {"shape": np.array([1, -1], np.int64)}, batch=1)
    res = onnx_kit.check(m, x_img(rng, n=1))
    assert res.graph["y"].shape == (192,)


def test_supported_ops_listed():
    ops = supported_ops()
    for op in ("Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "AveragePool",
               "MaxPool", "Flatten", "Reshape", "Concat", "Pad", "Add", "Mul"):
        assert op in ops


def test_clip_min_only_and_global_max_pool(onnx_kit, rng):
    nodes = [H("Clip", ["x", "lo"], ["c"]), H("GlobalMaxPool", ["c"], ["y"], name="gmp")]
    res = onnx_kit.check(onnx_kit.model(nodes, {"lo": np.float32(0)}), x_img(rng))
    assert res.graph["c"].max_value is None and res.graph["y"].kernel == (8, 8)
    assert "gmp" in res.warnings[0]


def test_ann_forward_inputs_and_return_all(onnx_kit, rng):
    import torch

    from snncompile.sim.ann import ann_forward
    from snncompile.errors import DataError

    nodes = [H("Conv", ["x", "W"], ["c"]), H("Relu", ["c"], ["y"])]
    res = import_onnx(onnx_kit.model(nodes, {"W": w(rng, 2, 3, 3, 3)}))
    x = x_img(rng)
    all_ = ann_forward(res.graph, torch.from_numpy(x), return_all=True)
    assert set(all_) == {"x", "c", "y"} and all_["y"].dtype == torch.float32
    assert torch.equal(all_["y"], ann_forward(res.graph, x))
    with pytest.raises(DataError, match="expects"):
        ann_forward(res.graph, x[:, :2])
